"""Tracing: run the step's forward once and record every primitive call into a `Graph`.

While a `Tracer` is installed (`autograd._tracing.hook`), `apply` and `apply_inplace` hand each
primitive call to it instead of the engine. The tracer runs the forward on the real arrays
(so shapes come out right and Python control flow is taken once, as with `torch.jit.trace`),
but records no autograd graph and keeps no activations: the trace costs the memory of an
inference pass. It applies eager autograd's rules itself: which outputs require grad, which
inputs an op saves, and an in-place write to a value some op saved raises `MutationError`
naming that op, as backward would in eager mode. Tensors made from numpy data inside the
step are captured as constants; a tensor that requires grad must be a model parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import VJPS, Ctx, Primitive, _tracing
from ..engine import get_engine
from ..errors import MutationError
from ..tensor import Tensor, _mode
from ..var import Var
from .fallback import RECOMPUTABLE
from .graph import FwdOp, Graph, Value
from .kernels import KERNELS, Meta

__all__ = ["Tracer", "trace"]


class _TracedNode:
    """Stands in for an autograd node on traced tensors (so `requires_grad` reads right)."""

    __slots__ = ("prim",)
    parents: tuple = ()

    def __init__(self, prim: Primitive):
        self.prim = prim


class _TraceCtx(Ctx):
    """A Ctx that remembers the buffers the forward allocates (fallback ops replay them)."""

    def __init__(self, pool: Any, params: dict[str, Any]):
        super().__init__(pool, params)
        self.allocs: list[np.ndarray] = []

    def alloc(self, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
        arr = super().alloc(shape, dtype)
        self.allocs.append(arr)
        return arr


class Tracer:
    """Builds the graph of one forward; install it with `trace()`."""

    def __init__(self, params: Sequence[Tensor], inputs: Sequence[Tensor]):
        self.pool = get_engine().pool
        self.values: list[Value] = []
        self.ops: list[FwdOp] = []
        self.by_uid: dict[int, int] = {}
        self.param_ids: list[int] = []
        self.input_ids: list[int] = []
        self.saved: dict[int, list[tuple[str, int]]] = {}  # root value -> (saver, version)
        self.version: dict[int, int] = {}
        self.stale: set[int] = set()
        self._params = {p._var.uid: p for p in params}
        for i, t in enumerate(inputs):
            v = self._new(t._var.data, "input", t.name or f"input{i}", input_index=i)
            self.by_uid[t._var.uid] = v.id
            self.input_ids.append(v.id)

    # -- values -----------------------------------------------------------------------------
    def _new(self, arr: np.ndarray, kind: str, name: str, **kw: Any) -> Value:
        v = Value(len(self.values), tuple(arr.shape), arr.dtype, kind, name, **kw)
        self.values.append(v)
        return v

    def value_of(self, t: Tensor) -> int:
        """The value a tensor holds now; parameters and constants are added on first sight."""
        var = t._var
        vid = self.by_uid.get(var.uid)
        if vid is not None:
            if vid in self.stale:
                raise RuntimeError(
                    f"hybridize: tensor '{var.label}' is read after an in-place op overwrote "
                    f"the buffer it shares; copy it first or use the out-of-place op")
            return vid
        arr = _data(var)
        p = self._params.get(var.uid)
        if p is not None:
            grad = p._grad.data if p._grad is not None else None
            v = self._new(arr, "param", var.name, array=arr, grad=grad,
                          requires_grad=p.requires_grad)
            self.param_ids.append(v.id)
        elif t.requires_grad:
            raise ValueError(
                f"hybridize: tensor '{var.label}' requires grad but is not a parameter of "
                f"the model; register it as a Parameter or detach() it")
        else:
            v = self._new(arr, "const", var.name, array=arr, var=var)
        self.by_uid[var.uid] = v.id
        return v.id

    def root(self, vid: int) -> int:
        v = self.values[vid]
        while v.base >= 0:
            v = self.values[v.base]
        return v.id

    def _aliases(self, root: int) -> list[int]:
        return [v.id for v in self.values if v.id == root or self.root(v.id) == root]

    # -- the hooks ----------------------------------------------------------------------------
    def apply(self, prim: Primitive, inputs: tuple[Tensor, ...], params: dict[str, Any]) -> Tensor:
        """Record and run one out-of-place primitive call (autograd.apply while tracing)."""
        vids = tuple(self.value_of(t) for t in inputs)
        arrays = [_data(t._var) for t in inputs]
        record, parents = self._grad_flow(prim, vids)
        ctx = _TraceCtx(self.pool, params)
        ctx.shapes = tuple(a.shape for a in arrays)
        with self.pool.transient_peak() as peak:
            res = prim.forward(ctx, *arrays, **params)
        if type(res) is not np.ndarray:
            res = np.asarray(res)
        op = self._op(prim, params, vids, arrays, res, record, parents)
        if op.spec is None:  # scratch the plan does not see (op-internal pool buffers)
            op.transient = max(0, peak[0] - sum(a.nbytes for a in ctx.allocs))
        if prim.view:
            base = vids[0]
            kind = self.values[self.root(base)].kind
            view = _view_fn(prim, params, ctx)
            arr = res if kind in ("param", "const") else None
            out = self._new(res, kind, prim.name, producer=op.index, base=base, view=view,
                            array=arr, requires_grad=record)
            op.outs = (out.id,)
            op.recomputable = True
        else:
            out = self._new(res, "temp", prim.name, producer=op.index, requires_grad=record)
            op.outs = (out.id,)
            self._add_aux(op, ctx, res)
        self._mark_saved(prim, vids, out.id, record)
        return self._wrap(res, prim, out.id, record)

    def apply_inplace(self, prim: Primitive, target: Tensor, others: tuple[Tensor, ...],
                      params: dict[str, Any]) -> Tensor:
        """Record an in-place call as a function of the old value (autograd.apply_inplace)."""
        tv = self.value_of(target)
        vids = (tv,) + tuple(self.value_of(o) for o in others)
        kind = self.values[self.root(tv)].kind
        if kind in ("param", "input"):
            raise NotImplementedError(
                f"hybridize: in-place op '{prim.name}' on {kind} '{target._var.label}' inside "
                f"the step is not supported")
        root = self.root(tv)
        for saver, ver in self.saved.get(root, ()):
            raise MutationError(saver, target._var.label, ver, self.version.get(root, 0) + 1,
                                prim.name)
        record, parents = self._grad_flow(prim, vids)
        arrays = [_data(target._var)] + [_data(o._var) for o in others]
        side_effect = kind == "const"
        if side_effect:  # a module buffer: do not touch the real one while tracing
            arrays[0] = arrays[0].copy()
        ctx = _TraceCtx(self.pool, params)
        ctx.shapes = tuple(a.shape for a in arrays)
        prim.forward(ctx, *arrays, **params)
        res = arrays[0]
        op = self._op(prim, params, vids, arrays, res, record, parents)
        op.side_effect = side_effect
        if side_effect:
            op.recomputable = False
            out = self._new(res, "const", prim.name, producer=op.index,
                            array=_data(target._var), var=target._var)
        else:
            out = self._new(res, "temp", prim.name, producer=op.index, requires_grad=record)
        op.outs = (out.id,)
        self._add_aux(op, ctx, None)
        self.stale.update(self._aliases(root))
        self.version[out.id] = self.version.get(root, 0) + 1
        self.by_uid[target._var.uid] = out.id
        self._mark_saved(prim, vids, out.id, record)
        if record:
            target._node = _TracedNode(prim)
        return target

    # -- helpers ------------------------------------------------------------------------------
    def _grad_flow(self, prim: Primitive, vids: tuple[int, ...]) -> tuple[bool, tuple]:
        if not _mode.enabled:
            return False, ()
        parents: list[Any] = []
        for vid in vids:
            v = self.values[vid]
            if not v.requires_grad:
                parents.append(None)
            elif v.kind == "param" and v.base < 0:
                parents.append(("param", vid))
            else:
                parents.append(("op", v.producer, vid))
        if not any(p is not None for p in parents):
            return False, ()
        vjps = VJPS.get(prim.name)
        if vjps is None:
            raise NotImplementedError(f"op '{prim.name}' has no registered VJP")
        for i, p in enumerate(parents):
            if p is not None and (i >= len(vjps) or vjps[i] is None):
                raise TypeError(f"op '{prim.name}' is not differentiable in argument {i}")
        return True, tuple(parents)

    def _op(self, prim: Primitive, params: dict[str, Any], vids: tuple[int, ...],
            arrays: list[np.ndarray], res: np.ndarray, record: bool, parents: tuple) -> FwdOp:
        meta = Meta(tuple(a.shape for a in arrays), tuple(a.dtype for a in arrays),
                    tuple(res.shape), res.dtype, params)
        spec = None if prim.view else KERNELS.get(prim.name)
        op = FwdOp(len(self.ops), prim, params, vids, (), meta, spec, record, parents,
                   recomputable=spec is not None or prim.name in RECOMPUTABLE)
        self.ops.append(op)
        return op

    def _add_aux(self, op: FwdOp, ctx: _TraceCtx, res: np.ndarray | None) -> None:
        """Aux outputs: a spec's declared buffers, or the buffers a fallback forward allocated."""
        if op.spec is not None:
            shapes = op.spec.aux(op.meta)
        else:
            op.allocs = [(a.shape, a.dtype) for a in ctx.allocs]
            op.result_alloc = next((i for i, a in enumerate(ctx.allocs) if a is res), -1)
            shapes = [s for i, s in enumerate(op.allocs) if i != op.result_alloc]
        outs = list(op.outs)
        for j, (shape, dtype) in enumerate(shapes):
            v = Value(len(self.values), tuple(shape), np.dtype(dtype), "temp",
                      f"{op.name}.aux{j}", producer=op.index, out_slot=j + 1)
            self.values.append(v)
            outs.append(v.id)
        op.outs = tuple(outs)

    def _mark_saved(self, prim: Primitive, vids: tuple[int, ...], out: int, record: bool) -> None:
        if not record:
            return
        for i in prim.saves:
            r = self.root(vids[i])
            self.saved.setdefault(r, []).append((prim.name, self.version.get(r, 0)))
        if prim.saves_output:
            r = self.root(out)
            self.saved.setdefault(r, []).append((prim.name, self.version.get(r, 0)))

    def _wrap(self, res: np.ndarray, prim: Primitive, vid: int, record: bool) -> Tensor:
        var = Var(res, prim.name)
        self.by_uid[var.uid] = vid
        out = Tensor._wrap(var)
        if record:
            out._node = _TracedNode(prim)
        return out

    def graph(self, loss: Tensor) -> Graph:
        """The finished graph, with `loss` (a scalar that requires grad) as its output."""
        vid = self.by_uid.get(loss._var.uid)
        if vid is None or self.values[vid].kind != "temp":
            raise ValueError("hybridize: the loss must be computed by the step from its inputs")
        v = self.values[vid]
        if not v.requires_grad:
            raise ValueError("hybridize: the loss does not depend on any parameter")
        if int(np.prod(v.shape)) != 1:
            raise ValueError(f"hybridize: the loss must be a scalar, got shape {v.shape}")
        return Graph(self.values, self.ops, vid, self.input_ids, self.param_ids)


def _data(var: Var) -> np.ndarray:
    arr = var.data
    if arr is None:
        get_engine().wait_for_var(var)
        arr = var.data
    return arr


def _view_fn(prim: Primitive, params: dict[str, Any], ctx: Ctx) -> Any:
    fwd = prim.forward
    return lambda a: fwd(ctx, a, **params)


class trace:  # noqa: N801 - a context manager
    """Install `tracer` as the apply hook inside the block (one trace at a time)."""

    def __init__(self, tracer: Tracer):
        self.tracer = tracer

    def __enter__(self) -> Tracer:
        if _tracing.hook is not None:
            raise RuntimeError("hybridize: already tracing a step")
        _tracing.hook = self.tracer
        return self.tracer

    def __exit__(self, *exc: object) -> None:
        _tracing.hook = None
