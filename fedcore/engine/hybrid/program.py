"""From graph + backward steps to a linear program of instructions, with recomputation.

`build_program(graph, steps, keep)` emits the forward, then the backward. A saved activation
(a value some VJP reads) that is not in `keep` is dropped after its last forward use; the first
backward instruction that needs it recomputes it from whatever is still alive, recursively
(Chen et al. 2016: keeping every k-th activation of a chain recomputes each segment once, just
before its backward). Every value computed again is a new *instance* with its own buffer, so
the memory planner can place it wherever it fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .autodiff import BwdStep
from .fallback import fallback_cost, fallback_fwd, fallback_vjp
from .graph import FwdOp, Graph
from .kernels import ALIAS, Meta, Vjp

__all__ = ["Inst", "Instr", "Prepared", "Program", "build_program", "prepare"]


@dataclass(eq=False)
class Inst:
    """One computed copy of a value (or a view of one, or a fixed array)."""

    value: int
    base: int = -1  # views: the instance viewed
    view: Callable[[np.ndarray], np.ndarray] | None = None
    fixed: np.ndarray | None = None  # params, consts, gradient slices
    input_index: int = -1  # step inputs (and views of them)


@dataclass(eq=False)
class Instr:
    """One closure of the replay: its instances in and out, scratch, and in-place options."""

    name: str
    ins: list[int]
    outs: list[int]
    build: Callable[[list[np.ndarray], list[np.ndarray], list[np.ndarray]], Callable[[], None]]
    scratch: list[tuple[tuple[int, ...], Any]] = field(default_factory=list)
    inplace: list[tuple[int, int]] = field(default_factory=list)  # (out pos, in pos)
    cost: float = 0.0
    phase: str = "fwd"  # fwd | re (recompute) | bwd | update


@dataclass(eq=False)
class Program:
    """The instruction list and its instances; `loss` is the loss value's instance."""

    instrs: list[Instr]
    insts: list[Inst]
    loss: int
    forward_end: int  # instructions [0, forward_end) are the first forward pass
    recompute_cost: float
    dropped: set[int]


@dataclass(eq=False)
class _Fwd:
    build: Any
    scratch: list
    inplace: list[tuple[int, int]]
    cost: float


@dataclass(eq=False)
class _Bwd:
    kind: str  # "kernel" | "view" (no instruction unless into a parameter) | "acc"
    needs: list[int]  # value ids read
    out: int  # gradient value id, or -1 when writing a parameter's gradient
    name: str
    build: Any = None
    scratch: list = field(default_factory=list)
    inplace: list[tuple[int, int]] = field(default_factory=list)
    view: Any = None
    param: int = -1
    mode: str = ""


@dataclass(eq=False)
class Prepared:
    """Per-graph work done once: kernel choices for every forward op and backward step."""

    fwd: list[_Fwd]
    bwd: list[_Bwd]
    saved: set[int]


def _vjp_of(op: FwdOp, i: int) -> Vjp | str | tuple | None:
    """A spec's VJP, ALIAS, ("view", fn) for reshape, or the fallback's."""
    if op.prim.view and op.prim.name == "reshape":
        shape = op.meta.in_shapes[0]
        return ("view", lambda a: a.reshape(shape))
    if op.spec is None:
        return fallback_vjp(op, i)
    return op.spec.vjp(op.meta, i)


def _resolve(op: FwdOp, need: str) -> int:
    if need == "out":
        return op.outs[0]
    if need.startswith("aux"):
        return op.outs[1 + int(need[3:])]
    return op.ins[int(need[2:])]


def _prep_fwd(op: FwdOp) -> _Fwd:
    if op.prim.view:
        return _Fwd(None, [], [], 0.0)
    if op.spec is None:
        build, scratch, inplace = fallback_fwd(op)
        return _Fwd(build, scratch, inplace, fallback_cost(op.meta))
    spec, m = op.spec, op.meta
    inplace = [(0, j) for j in spec.fwd_inplace
               if m.in_shapes[j] == m.out_shape and m.in_dtypes[j] == m.out_dtype]
    return _Fwd(_spec_fwd(spec, m), spec.fwd_scratch(m), inplace, spec.cost(m))


def _prep_bwd(graph: Graph, st: BwdStep) -> _Bwd:
    if st.kind == "acc":
        return _Bwd("acc", [st.acc, st.g], st.out, "grad_accumulate", _add_build,
                    inplace=[(0, 0), (0, 1)])
    op, i = st.op, st.arg
    vjp = _vjp_of(op, i)
    if vjp is None:
        raise TypeError(f"op '{op.name}' is not differentiable in argument {i}")
    name = f"{op.name}_backward"
    if vjp == ALIAS or isinstance(vjp, tuple):
        view = _identity if vjp == ALIAS else vjp[1]
        b = _Bwd("view", [st.g], st.out, name, _copy_view_build(view), view=view)
    else:
        needs = [st.g if n == "g" else _resolve(op, n) for n in vjp.needs]
        b = _Bwd("kernel", needs, st.out, name, _vjp_build(vjp), list(vjp.scratch),
                 [(0, j) for j in vjp.inplace])
    if st.param >= 0:
        p = graph.values[st.param]
        b.kind, b.param, b.mode, b.inplace = "kernel", st.param, st.mode, []
        if st.mode == "add":  # compute into a temporary, then add into the gradient
            b.scratch = [*b.scratch, (p.shape, p.dtype)]
            b.build = _add_into(b.build)
    return b


def prepare(graph: Graph, steps: list[BwdStep]) -> Prepared:
    """Choose kernels once; `saved` is the set of forward values backward reads."""
    bwd = [_prep_bwd(graph, st) for st in steps]
    fwd_ids = {v.id for v in graph.values if v.producer >= 0 and not v.fixed}
    saved = {v for b in bwd if b.kind == "kernel" for v in b.needs if v in fwd_ids}
    return Prepared([_prep_fwd(op) for op in graph.ops], bwd, saved)


class _Emitter:
    def __init__(self, graph: Graph, prep: Prepared):
        self.g = graph
        self.prep = prep
        self.insts: list[Inst] = []
        self.instrs: list[Instr] = []
        self.cur: dict[int, int] = {}
        self.recompute_cost = 0.0

    def new(self, vid: int, **kw: Any) -> int:
        self.insts.append(Inst(vid, **kw))
        return len(self.insts) - 1

    def need(self, vid: int) -> int:
        inst = self.cur.get(vid)
        if inst is not None:
            return inst
        v = self.g.values[vid]
        if v.base >= 0:  # a view: of whatever instance of its base is current
            b = self.need(v.base)
            inst = self.new(vid, base=b, view=v.view, fixed=v.array if v.fixed else None,
                            input_index=self.insts[b].input_index)
        elif v.kind in ("param", "const"):
            inst = self.new(vid, fixed=v.array)
        elif v.kind == "input":
            inst = self.new(vid, input_index=v.input_index)
        else:
            op = self.g.ops[v.producer]
            if not op.recomputable:
                raise AssertionError(f"hybridize: value of '{op.name}' was dropped but cannot "
                                     f"be recomputed")
            self.forward(op, "re")
            return self.cur[vid]
        self.cur[vid] = inst
        return inst

    def forward(self, op: FwdOp, phase: str) -> None:
        if op.prim.view:
            self.need(op.outs[0])
            return
        f = self.prep.fwd[op.index]
        ins = [self.need(v) for v in op.ins]
        outs = []
        for j, v in enumerate(op.outs):
            fixed = self.g.values[v].array if op.side_effect and j == 0 else None
            outs.append(self.new(v, fixed=fixed))
            self.cur[v] = outs[-1]
        if phase == "re":
            self.recompute_cost += f.cost
        self.instrs.append(Instr(op.name, ins, outs, f.build, f.scratch, f.inplace, f.cost,
                                 phase))

    def backward(self, b: _Bwd) -> None:
        ins = [self.need(v) for v in b.needs]
        if b.param >= 0:
            out = self.new(b.param, fixed=self.g.values[b.param].grad)
        elif b.kind == "view":
            self.cur[b.out] = self.new(b.out, base=ins[0], view=b.view)
            return
        else:
            out = self.cur[b.out] = self.new(b.out)
        self.instrs.append(Instr(b.name, ins, [out], b.build, b.scratch, b.inplace, 0.0, "bwd"))


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _spec_fwd(spec: Any, meta: Meta) -> Any:
    return lambda ins, outs, scr: spec.fwd(meta, ins, outs, scr)


def _vjp_build(vjp: Vjp) -> Any:
    return lambda ins, outs, scr: vjp.build(ins, outs[0], scr)


def _add_build(ins: list[np.ndarray], outs: list[np.ndarray], scr: list[np.ndarray]) -> Any:
    return partial(np.add, ins[0], ins[1], out=outs[0])


def _copy_view_build(view: Callable[[np.ndarray], np.ndarray]) -> Any:
    return lambda ins, outs, scr: partial(np.copyto, outs[0], view(ins[0]))


def _add_into(build: Any) -> Any:
    """Run `build` into the last scratch buffer, then add that into the real output."""
    def wrapped(ins: list[np.ndarray], outs: list[np.ndarray], scr: list[np.ndarray]) -> Any:
        tmp, dst = scr[-1], outs[0]
        inner = build(ins, [tmp], scr[:-1])
        add = np.add

        def run() -> None:
            inner()
            add(dst, tmp, out=dst)

        return run

    return wrapped


def build_program(graph: Graph, prep: Prepared, keep: set[int], head: list[Instr],
                  tail: list[Instr]) -> Program:
    """The full step: `head`, forward, backward (recomputing dropped values), `tail`."""
    em = _Emitter(graph, prep)
    em.instrs.extend(head)
    for op in graph.ops:
        em.forward(op, "fwd")
    forward_end = len(em.instrs)
    loss_inst = em.cur[graph.loss]
    # after the forward only kept activations (and what cannot be recomputed) stay usable
    saved, values, ops = prep.saved, graph.values, graph.ops
    dropped = set()
    for vid in list(em.cur):
        v = values[vid]
        if v.fixed or vid == graph.loss or v.producer < 0:
            continue
        if ops[v.producer].recomputable and not (vid in saved and vid in keep):
            del em.cur[vid]
            if vid in saved:
                dropped.add(vid)
    for b in prep.bwd:
        em.backward(b)
    em.instrs.extend(tail)
    return Program(em.instrs, em.insts, loss_inst, forward_end, em.recompute_cost, dropped)
