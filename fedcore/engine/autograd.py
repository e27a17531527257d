"""Reverse-mode autograd over engine ops: primitives, the VJP table and the tape.

A `Primitive` carries its forward; its vector-Jacobian products live in the `VJPS` table, one
function per argument (HIPS autograd's `defvjp`), so the tape machinery never needs to know
an op's maths. Recording saves *(var, version)* pairs, never copies: when backward runs,
a saved var whose version moved (an in-place write after it was saved) raises `MutationError`
naming the op and the var. Forward and backward steps are both pushed through the engine with
their read and write sets. The backward pass itself is in `fedcore.engine.backprop`.

What a node keeps is only what its backward will read. A primitive that declares `reads` (for
each input, which saved inputs that input's VJP reads) keeps nothing for an input that needs no
gradient: `x @ W` with W frozen (LoRA's base, a tied head's frozen table) keeps no x. And an
input that a cheap `remat` primitive produced (RMSNorm, the SwiGLU gate: each keeps all its own
inputs for its own backward anyway) is not kept at all but recomputed from those inputs when
the consumer's backward runs (once for all the consumers of one result): a matmul after a
norm holds no copy of the normalised activations between forward and backward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .deps import expected_version
from .engine import get_engine
from .errors import MutationError
from .pool import MemoryPool
from .tensor import Leaf, Tensor, _mode, default_float
from .var import Var

__all__ = ["VJPS", "VJPS_INTO", "Ctx", "Node", "Primitive", "Recompute", "Remat", "apply",
           "apply_inplace", "defvjp", "defvjp_into"]

VJP = Callable[["Ctx", np.ndarray], np.ndarray]

#: op name -> one VJP per positional input (None: not differentiable in that input)
VJPS: dict[str, tuple[VJP | None, ...]] = {}

VJPInto = Callable[["Ctx", np.ndarray, np.ndarray], None]

#: op name -> optional "store" forms of some VJPs: `vjp_into(ctx, g, out)` writes exactly what
#: the VJP returns into `out` (e.g. a weight gradient GEMM with out=). Backward uses them when
#: the destination gradient is known to be zero (right after zero_grad): no temporary, no add.
VJPS_INTO: dict[str, tuple[VJPInto | None, ...]] = {}


class Primitive:
    """An op's identity and forward: `forward(ctx, *arrays, **params) -> np.ndarray`.

    `saves`: indices of inputs the VJPs read; `saves_output`: the VJPs read the result.
    `reads`: per input, the saved inputs its VJP reads (None: every VJP may read every saved
    input); an input no differentiable input's VJP reads is not kept.
    `remat`: the result is cheap to recompute and the op saves every input it has, so a
    consumer keeps the recipe instead of the result (see the module docstring).
    `view`: the result is a view of input 0 (no allocation, shares its version).
    `inplace`: forward writes into input 0 and returns nothing.
    `vjp_work(ctx, g)`: set when the VJPs share nothing (no memo on ctx, no common scratch),
    so they may run side by side; returns what each costs in multiply-adds.
    """

    __slots__ = ("name", "forward", "saves", "saves_output", "view", "inplace", "reads",
                 "remat", "vjp_work")

    def __init__(self, name: str, forward: Callable[..., Any], saves: tuple[int, ...] = (),
                 saves_output: bool = False, view: bool = False, inplace: bool = False,
                 reads: tuple[tuple[int, ...], ...] | None = None, remat: bool = False,
                 vjp_work: Callable[[Ctx, np.ndarray], int] | None = None):
        if inplace and 0 in saves:
            raise ValueError(f"{name}: an in-place op cannot save the input it overwrites")
        if remat and (inplace or view):
            raise ValueError(f"{name}: only an op with a fresh result can be recomputed")
        self.name = name
        self.forward = forward
        self.saves = saves
        self.saves_output = saves_output
        self.view = view
        self.inplace = inplace
        self.reads = reads
        self.remat = remat
        self.vjp_work = vjp_work

    def __repr__(self) -> str:
        return f"Primitive({self.name!r})"


def defvjp(prim: Primitive | str, *vjps: VJP | None) -> None:
    """Register the VJPs of `prim`, one per input: `vjp(ctx, g) -> gradient for that input`."""
    VJPS[prim if isinstance(prim, str) else prim.name] = vjps


def defvjp_into(prim: Primitive | str, *fns: VJPInto | None) -> None:
    """Register store forms of `prim`'s VJPs, one per input (None: use the VJP and copy)."""
    VJPS_INTO[prim if isinstance(prim, str) else prim.name] = fns


class Ctx:
    """Per-call scratch space shared by an op's forward and its VJPs.

    Forward may stash auxiliary results on it (e.g. softmax probabilities); at backward time
    `args` holds the saved inputs (None where not saved) and `ans` the saved output.
    """

    def __init__(self, pool: MemoryPool, params: dict[str, Any]):
        self.pool = pool
        self.params = params
        self.dtype = default_float()  # captured at push time: workers may run the op later
        self.shapes: tuple[tuple[int, ...], ...] = ()
        self.args: tuple[np.ndarray | None, ...] = ()
        self.ans: np.ndarray | None = None

    def alloc(self, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
        """An output buffer from the engine's pool (budget-checked before allocating); float32
        by default, float64 when the op was pushed inside `float64_mode()`."""
        return self.pool.alloc(shape, self.dtype if dtype is None else dtype)


class Node:
    """One recorded op in the graph: its parents' nodes and the (var, version) pairs it saved."""

    __slots__ = ("prim", "parents", "ctx", "in_vars", "out_var", "saved", "recompute")

    def __init__(self, prim: Primitive, parents: tuple, ctx: Ctx, in_vars: tuple,
                 out_var: Var | None, saved: tuple[tuple[Var, int], ...]):
        self.prim = prim
        self.parents = parents
        self.ctx: Ctx | None = ctx
        self.in_vars = in_vars
        self.out_var = out_var
        self.saved = saved
        self.recompute: Recompute | None = None  # shared by consumers that recompute it

    def check_saved(self) -> None:
        """Raise MutationError if a saved value was written after it was saved."""
        for var, ver in self.saved:
            root = var._base or var
            if root._version != ver:
                raise MutationError(self.prim.name, var.label, ver, root._version,
                                    root.last_writer)

    def release(self) -> None:
        """Drop saved references once backward has used them (frees memory early)."""
        self.ctx = None
        self.in_vars = ()
        self.out_var = None
        self.saved = ()
        self.recompute = None

    def __repr__(self) -> str:
        return f"Node({self.prim.name})"


class Remat:
    """What a node keeps instead of an input a `remat` op produced: the shared recipe of that
    op (`Recompute`) and the shape the consumer saw (a reshape of the result)."""

    __slots__ = ("recipe", "shape")

    def __init__(self, recipe: Recompute, shape: tuple[int, ...]):
        self.recipe, self.shape = recipe, shape
        recipe.users += 1

    def value(self, pool: MemoryPool) -> np.ndarray:
        """The producer's result (computed again by the first consumer that asks)."""
        return self.recipe.get(pool).reshape(self.shape)

    def done(self) -> None:
        """This consumer's backward has used the value (the last one drops it)."""
        self.recipe.release()


class Recompute:
    """A `remat` op's recipe (the op, its inputs and parameters), shared by every consumer
    that keeps it: the first consumer's backward computes the result and the consumers that
    follow reuse it (the q, k and v projections after one RMSNorm recompute it once, not
    three times); the last one's `done` drops it, so it lives only while it is needed."""

    __slots__ = ("prim", "in_vars", "params", "dtype", "users", "result", "lock")

    def __init__(self, node: Node):
        self.prim, self.in_vars = node.prim, node.in_vars
        self.params, self.dtype = node.ctx.params, node.ctx.dtype
        self.users = 0
        self.result: np.ndarray | None = None
        self.lock = threading.Lock()  # consumers may run side by side on a threaded engine

    def get(self, pool: MemoryPool) -> np.ndarray:
        """The producer's result, computed on first use (a fresh pool buffer)."""
        with self.lock:
            if self.result is None:
                ctx = Ctx(pool, self.params)
                ctx.dtype = self.dtype
                self.result = self.prim.forward(ctx, *[v.data for v in self.in_vars],
                                                **self.params)
            return self.result

    def release(self) -> None:
        """One consumer fewer; with none left, the result is dropped (its buffer recycled)."""
        with self.lock:
            self.users -= 1
            if self.users <= 0:
                self.result = None


def _remat_source(t: Tensor) -> Node | None:
    """The recomputable node whose result `t` is (through reshapes), else None."""
    node = t._node
    while type(node) is Node and node.prim.view and node.prim.name == "reshape":
        node = node.parents[0]
    if type(node) is not Node or not node.prim.remat or node.ctx is None:
        return None
    if any(v is None for v in node.in_vars):  # it must keep every input it recomputes from
        return None
    return node


def _record(prim: Primitive, inputs: tuple[Tensor, ...], in_vars: tuple[Var, ...],
            out_var: Var, ctx: Ctx) -> Node:
    vjps = VJPS.get(prim.name)
    if vjps is None:
        raise NotImplementedError(f"op '{prim.name}' has no registered VJP")
    for i, t in enumerate(inputs):
        if t._node is not None and (i >= len(vjps) or vjps[i] is None):
            raise TypeError(f"op '{prim.name}' is not differentiable in argument {i}")
    saves = prim.saves
    if prim.reads is not None:  # only what the VJPs that will run read
        need = {j for i, t in enumerate(inputs) if t._node is not None for j in prim.reads[i]}
        saves = tuple(i for i in saves if i in need)
    kept: list[Var | Remat | None] = [None] * len(in_vars)
    saved: list[tuple[Var, int]] = []
    for i in saves:
        src = _remat_source(inputs[i])
        if src is None:
            kept[i] = in_vars[i]
            saved.append((in_vars[i], expected_version(in_vars[i])))
        else:  # recomputed at backward from the producer's inputs (checked and read then)
            if src.recompute is None:
                src.recompute = Recompute(src)
            kept[i] = Remat(src.recompute, inputs[i].shape)
            saved.extend(src.saved)
    if prim.saves_output:
        saved.append((out_var, expected_version(out_var)))
    return Node(prim, tuple(t._node for t in inputs), ctx, tuple(kept),
                out_var if prim.saves_output else None, tuple(saved))


class _Tracing:
    """Where `fedcore.engine.hybrid` installs its tracer while it traces a training step."""

    hook: Any = None


_tracing = _Tracing()


def apply(prim: Primitive, *inputs: Tensor, **params: Any) -> Tensor:
    """Push `prim` on `inputs` through the engine and record it if any input requires grad."""
    if _tracing.hook is not None:  # fedcore.engine.hybrid is tracing a step
        return _tracing.hook.apply(prim, inputs, params)
    eng = get_engine()
    in_vars = tuple([t._var for t in inputs])
    record = False
    if _mode.enabled:
        for t in inputs:
            if t._node is not None:
                record = True
                break
    ctx = Ctx(eng.pool, params)
    fwd = prim.forward
    if prim.view:
        # Metadata only: reads the input, writes nothing, shares its buffer and version. (A
        # threaded engine must resolve such views before their consumers run.)
        out_var = Var(None, prim.name, base=in_vars[0])
        writes: tuple[Var, ...] = ()
    else:
        out_var = Var(None, prim.name)
        writes = (out_var,)
    if record:
        def fn() -> None:
            arrays = [v.data for v in in_vars]
            ctx.shapes = tuple([a.shape for a in arrays])
            out_var.data = fwd(ctx, *arrays, **params)
    else:
        def fn() -> None:
            out_var.data = fwd(ctx, *[v.data for v in in_vars], **params)
    if writes or not eng.asynchronous:
        eng.push(fn, in_vars, writes, prim.name)
    else:  # a view under an asynchronous engine: resolve it now, consumers need the array
        eng.wait_for_var(in_vars[0])
        fn()
    out = Tensor._wrap(out_var)
    if record:
        out._node = _record(prim, inputs, in_vars, out_var, ctx)
    return out


def apply_inplace(prim: Primitive, target: Tensor, *others: Tensor, **params: Any) -> Tensor:
    """Push an in-place `prim` that overwrites `target`; rebase target's graph node."""
    if _tracing.hook is not None:
        return _tracing.hook.apply_inplace(prim, target, others, params)
    eng = get_engine()
    tv = target._var
    other_vars = tuple(o._var for o in others)
    record = _mode.enabled and (
        target._node is not None or any(o._node is not None for o in others)
    )
    root = tv._base or tv
    aliased = any((v._base or v) is root for v in other_vars)
    if record:
        if type(target._node) is Leaf:
            raise RuntimeError(
                f"in-place op '{prim.name}' on leaf tensor '{tv.label}' that requires grad; "
                f"use the out-of-place op, or run it under no_grad()"
            )
        if aliased:
            raise RuntimeError(f"in-place op '{prim.name}': an argument aliases the target")
    ctx = Ctx(eng.pool, params)
    fwd = prim.forward
    all_vars = (tv, *other_vars)

    def fn() -> None:
        arrays = [v.data for v in all_vars]
        if record:
            ctx.shapes = tuple([a.shape for a in arrays])
        fwd(ctx, *arrays, **params)

    reads = tuple(v for v in other_vars if (v._base or v) is not root) if aliased else other_vars
    eng.push(fn, reads, (tv,), prim.name)
    if record:
        target._node = _record(prim, (target, *others), all_vars, tv, ctx)
    return target
