"""Binding a plan to one arena, and `TrainStep`: trace once, plan once, replay every step.

Binding turns every instruction into a closure over fixed numpy views of the arena (made once),
so a replay is a loop of calls with no allocation and no per-op bookkeeping. Instructions that
read a step input are rebuilt when the caller passes a different input array (a handful of
closures). The whole replay is pushed to the engine as ONE op writing the parameters, their
gradients, the optimizer state and the arena, so it is ordered with eager work and versions
move (a graph recorded before the step sees the parameters change).

A new input signature (shapes and dtypes; e.g. a smaller last batch) is traced and planned
again; plans are cached per signature (at most `max_plans`) and share one arena, grown when
a new plan needs more.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import numpy as np

from ...optim.optimizer import Optimizer
from ...optim.sgd import CHUNK as SGD_CHUNK  # the eager step's: a 128 KiB scratch at most
from ...optim.sgd import SGD, sgd_update
from ..engine import get_engine
from ..tensor import Tensor, as_array
from ..var import Var
from .autodiff import backward_steps
from .planner import Plan, choose
from .program import Instr
from .tracer import Tracer, trace

__all__ = ["BoundPlan", "TrainStep", "compile_step"]


class BoundPlan:
    """A plan's closures over one arena; `run()` replays the step on the bound inputs."""

    def __init__(self, plan: Plan, arena: np.ndarray, graph: Any):
        self.plan = plan
        prog, lay = plan.program, plan.layout
        values = graph.values
        arrays: list[np.ndarray | None] = [None] * len(prog.insts)
        self._dynamic_insts: list[int] = []
        for i, inst in enumerate(prog.insts):
            if inst.input_index >= 0:
                self._dynamic_insts.append(i)
            elif inst.base >= 0:
                arrays[i] = inst.fixed if inst.fixed is not None else \
                    inst.view(arrays[inst.base])
            elif inst.fixed is not None:
                arrays[i] = inst.fixed
            else:
                v = values[inst.value]
                arrays[i] = _view(arena, lay.offsets[lay.storage[i]], v.shape, v.dtype)
        self._arrays = arrays
        self.fns: list[Callable[[], None]] = []
        self._dynamic: list[tuple[int, Instr, list[np.ndarray]]] = []
        dyn = set(self._dynamic_insts)
        for idx, ins in enumerate(prog.instrs):
            scr = [_view(arena, off, shape, dtype)
                   for off, (shape, dtype) in zip(lay.scratch[idx], ins.scratch, strict=True)]
            if dyn.intersection(ins.ins):
                self._dynamic.append((idx, ins, scr))
                self.fns.append(_unbound)
            else:
                self.fns.append(ins.build([arrays[x] for x in ins.ins],
                                          [arrays[x] for x in ins.outs], scr))
        self.loss = arrays[prog.loss]
        self._bound_inputs: list[np.ndarray] | None = None
        self.reads: list[Var] = []
        self.writes: list[Var] = []

    def bind_inputs(self, inputs: list[np.ndarray]) -> None:
        """Point the instructions that read step inputs at `inputs` (no-op if unchanged)."""
        cur = self._bound_inputs
        if cur is not None and all(a is b for a, b in zip(cur, inputs, strict=True)):
            return
        arrays, insts = self._arrays, self.plan.program.insts
        for i in self._dynamic_insts:
            inst = insts[i]
            arrays[i] = inputs[inst.input_index] if inst.base < 0 else inst.view(arrays[inst.base])
        for idx, ins, scr in self._dynamic:
            self.fns[idx] = ins.build([arrays[x] for x in ins.ins],
                                      [arrays[x] for x in ins.outs], scr)
        self._bound_inputs = list(inputs)

    def run(self) -> None:
        """Replay every instruction once."""
        for f in self.fns:
            f()


def _unbound() -> None:
    raise RuntimeError("hybridize: plan replayed before its inputs were bound")


def _view(arena: np.ndarray, off: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return arena[off:off + n].view(dtype).reshape(shape)


def _sgd_instr(opt: SGD, chunk: int) -> Instr:
    """The optimizer update as one instruction: `sgd_update` chunk by chunk (same rounding)."""
    slots = opt._slots()
    buf = opt._state("momentum") if opt.momentum else None
    chunk = min(chunk, max(k for _, _, _, k in slots))

    def build(ins: list, outs: list, scr: list[np.ndarray]) -> Callable[[], None]:
        s = scr[0]
        items = []
        for pvar, gvar, off, k in slots:
            p, g = pvar.data.reshape(-1), gvar.data.reshape(-1)
            b = None if buf is None else buf.data[off:off + k]
            for c in range(0, k, chunk):
                e = min(c + chunk, k)
                items.append((p[c:e], g[c:e], None if b is None else b[c:e], s[:e - c]))

        def run() -> None:
            lr, m, wd, nesterov = opt.lr, opt.momentum, opt.weight_decay, opt.nesterov
            for p, g, b, sc in items:
                sgd_update(p, g, b, sc, lr, m, wd, nesterov)
            opt.step_count += 1

        return run

    return Instr("sgd_step", [], [], build, [((chunk,), np.float32)], [], 0.0, "update")


def _zero_instr(grads: list[np.ndarray]) -> Instr:
    def build(ins: list, outs: list, scr: list) -> Callable[[], None]:
        def run() -> None:
            for g in grads:
                g.fill(0)

        return run

    return Instr("zero_grad", [], [], build, [], [], 0.0, "fwd")


class TrainStep:
    """`step(x, y) -> loss`: one planned training step of `loss_fn(model(x), y)`."""

    def __init__(self, model: Any, loss_fn: Callable[..., Tensor], optimizer: Optimizer,
                 budget_bytes: int | None = None, max_plans: int = 8):
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive or None, got {budget_bytes}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.budget_bytes = budget_bytes
        self.max_plans = max_plans
        model.flatten_parameters()
        self._params = model.parameters()
        self._plans: dict[tuple, tuple[Any, Plan, BoundPlan | None]] = {}
        self._arena: np.ndarray | None = None
        self._arena_var = Var(None, "hybrid_arena")
        self.traces = 0
        self._last_sig: tuple | None = None

    @property
    def plan(self) -> Plan | None:
        """The most recently used plan (None before the first step)."""
        entry = self._plans.get(self._last_sig)
        return None if entry is None else entry[1]

    def _deps(self, graph: Any) -> tuple[list[Var], list[Var]]:
        """(reads, writes) of a replay: buffers it reads, and everything it updates."""
        writes: dict[int, Var] = {id(self._arena_var): self._arena_var}
        for p in self._params:
            for v in (p._var, p._grad):
                if v is not None:
                    writes[id(v.root)] = v.root
        if isinstance(self.optimizer, SGD):
            for v in self.optimizer._states.values():
                writes[id(v)] = v
        reads: dict[int, Var] = {}
        for op in graph.ops:
            if op.side_effect:
                r = graph.values[op.outs[0]].var.root
                writes[id(r)] = r
        for v in graph.values:
            if v.var is not None and id(v.var.root) not in writes:
                reads[id(v.var.root)] = v.var.root
        return list(reads.values()), list(writes.values())

    def __call__(self, *inputs: Any) -> float:
        """Run one step on `inputs` (e.g. x, y); returns the loss before the update."""
        arrays = [as_array(x.data if isinstance(x, Tensor) else x) for x in inputs]
        sig = tuple((a.shape, a.dtype.str) for a in arrays)
        entry = self._plans.get(sig)
        if entry is None:
            entry = self._compile(arrays, sig)
        self._last_sig = sig
        _, _, bound = entry
        eng = get_engine()

        def replay() -> None:
            bound.bind_inputs(arrays)
            bound.run()

        eng.push(replay, bound.reads, bound.writes, "hybrid_step")
        if not isinstance(self.optimizer, SGD):
            self.optimizer.step()
        eng.wait_for_var(self._arena_var)
        return float(bound.loss)

    def _compile(self, arrays: list[np.ndarray], sig: tuple) -> tuple:
        eng = get_engine()
        eng.wait_all()
        tensors = [Tensor._wrap(Var(a, f"input{i}")) for i, a in enumerate(arrays)]
        tracer = Tracer(self._params, tensors)
        with trace(tracer):
            loss = self.loss_fn(self.model(tensors[0]), *tensors[1:])
        graph = tracer.graph(loss)
        del loss, tensors, tracer
        steps, _, written = backward_steps(graph)
        opt = self.optimizer
        chunk = SGD_CHUNK
        if self.budget_bytes is not None:  # a scratch no bigger than the largest activation
            temps = [int(np.prod(v.shape)) for v in graph.values if v.kind == "temp"]
            chunk = min(chunk, max([1 << 14, *temps]))
        tail = [_sgd_instr(opt, chunk)] if isinstance(opt, SGD) else []
        pid = {id(graph.values[v].array): v for v in graph.params}
        missing = [p._grad.data for p in self._params
                   if p.requires_grad and p._grad is not None
                   and pid.get(id(p._var.data)) not in written]
        head = [_zero_instr(missing)] if missing else []
        gc.collect()
        pool = eng.pool
        own = 0 if self._arena is None else self._arena.nbytes
        # ops run as fallbacks take pool scratch the plan does not place (their VJPs about
        # twice their forward's): keep room for the largest beside the arena
        reserve = 2 * max([op.transient for op in graph.ops] + [0])
        persistent = pool.live_bytes - own + reserve
        plan = choose(graph, steps, head, tail, persistent, self.budget_bytes)
        gc.collect()  # planning leaves cyclic garbage behind: return it before the arena
        pool.release_cached()  # and the tracing step's recycled buffers: the arena replaces them
        self.traces += 1
        if len(self._plans) >= self.max_plans:
            self._plans.pop(next(iter(self._plans)))
        need = plan.layout.arena_bytes
        if self._arena is None or self._arena.nbytes < need:
            self._grow(need)
        entry = (graph, plan, self._bind(plan, graph))
        self._plans[sig] = entry
        return entry

    def _bind(self, plan: Plan, graph: Any) -> BoundPlan:
        bound = BoundPlan(plan, self._arena, graph)
        bound.reads, bound.writes = self._deps(graph)
        return bound

    def _grow(self, nbytes: int) -> None:
        """A bigger arena (the old one is freed first) and every cached plan rebound to it."""
        pool = get_engine().pool
        if self._arena is not None:
            if pool.owns(self._arena):
                pool.free(self._arena)
            self._arena = None
            for sig, (graph, plan, _) in list(self._plans.items()):
                self._plans[sig] = (graph, plan, None)
        self._arena = pool.alloc((nbytes,), np.uint8, what="hybridize arena")
        self._arena_var.data = self._arena
        for sig, (graph, plan, _) in list(self._plans.items()):
            self._plans[sig] = (graph, plan, self._bind(plan, graph))


def compile_step(model: Any, loss_fn: Callable[..., Tensor], optimizer: Optimizer,
                 budget_bytes: int | None = None) -> TrainStep:
    """A `TrainStep` for `loss_fn(model(x), y)` updated by `optimizer`, within `budget_bytes`."""
    return TrainStep(model, loss_fn, optimizer, budget_bytes)
