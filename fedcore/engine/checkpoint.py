"""Activation recomputation (gradient checkpointing) of a whole sub-computation.

`checkpoint(fn, *inputs)` runs `fn` without recording: nothing inside it keeps an activation
for the backward pass. Its result gets one `Checkpoint` node that keeps only the inputs. When
the backward pass reaches that node it runs `fn` again on the same inputs, this time recording,
and propagates the incoming gradient through the fresh sub-graph: the parameters `fn` uses get
their gradients as usual, the inputs' gradients flow on to the outer graph, and the sub-graph's
activations are freed as soon as it is done. A model of L checkpointed blocks thus holds L block
inputs plus one block's activations at a time, for one more forward pass of compute (Chen et al.
2016, "Training deep nets with sublinear memory cost").

`fn` must compute the same thing twice (no randomness it does not reset itself, no reads of
state that the step changes between forward and backward); an input written in place between
the forward and the backward raises `MutationError`, as for any saved value. Under a tracer
(`fedcore.engine.hybrid`, whose planner chooses its own recomputation) or with recording off,
`checkpoint` is just `fn(*inputs)`.

`checkpoint_rows(fn, x, width)` does the same for a row-wise `fn` (each output row depends on
the same input row only: a norm, a feed-forward), one block of rows at a time, in the forward
and in the backward: only one block's activations ever exist (a transformer's feed-forward
holds ROW_ELEMS-sized blocks of its hidden layer instead of the whole batch's).
`checkpoint_batch(fn, x)` does the same over the items of the leading axis for an `fn` that
never mixes two items (a transformer block over a batch of sequences): its backward
recomputes a few sequences at a time, so one group's attention activations exist at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .autograd import Primitive, _tracing
from .backprop import _check_saved, propagate
from .deps import expected_version
from .engine import get_engine
from .ops import Operand, tensor
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad
from .var import Var

__all__ = ["BATCH_ELEMS", "ROW_ELEMS", "Checkpoint", "RowCheckpoint", "checkpoint",
           "checkpoint_batch", "checkpoint_rows"]

#: elements of the widest activation one block of `checkpoint_rows` holds (512 KiB of
#: float32). Smaller blocks cost more Python-level calls (the LoRA benchmark step took 1.2x
#: its time at a quarter of this); larger ones hold more. The engine's peak there was the
#: loss's at every size from 1 << 15 to 1 << 19; the process's peak RSS moved between 79 and
#: 90 MB with glibc's heap layout, lowest at this size.
ROW_ELEMS = 1 << 17

#: input elements one group of `checkpoint_batch` recomputes (256 KiB of float32: two
#: sequences of the tiny GPT's batch at T 128, d 256). Activations of a transformer block
#: are a few times its input per sequence, so one group holds ~1/4 of the batch's.
BATCH_ELEMS = 1 << 16


def _never(*_: Any) -> None:  # a checkpoint's forward is its `fn`, not a kernel
    raise RuntimeError("a checkpoint is not pushed as an op")


class _Sink:
    """Where a recomputed sub-graph ends: the place of one input; backward stops there."""

    __slots__ = ()
    parents: tuple = ()


def _recomputed(eng: Any, out: Any) -> Any:
    """The graph node of a recomputed result, once every op that computed it has run: some
    VJPs read what their forward left on the ctx, and a gradient can reach a VJP through ops
    that never read the forward's result (an addition), so backward must not start before."""
    if not isinstance(out, Tensor) or out._node is None:
        return None
    eng.wait_for_var(out._var)
    return out._node


class Checkpoint:
    """The graph node of a checkpointed result: `fn`, its inputs (vars and versions), their
    nodes. Backward recomputes and differentiates `fn` (see the module docstring)."""

    __slots__ = ("fn", "parents", "in_vars", "saved")
    prim = Primitive("checkpoint", _never)  # what `Tensor.grad_fn` names

    def __init__(self, fn: Callable[..., Tensor], inputs: tuple[Tensor, ...]):
        self.fn: Callable[..., Tensor] | None = fn
        self.parents = tuple(t._node for t in inputs)
        self.in_vars = tuple(t._var for t in inputs)
        self.saved = tuple((v, expected_version(v)) for v in self.in_vars)

    def backprop(self, eng: Any, gvar: Var) -> list[Var | None]:
        """Recompute `fn` with recording on, propagate `gvar` through it; return the inputs'
        gradient vars (None for an input that needs none)."""
        fn = self.fn
        if fn is None:
            raise RuntimeError("backward through 'checkpoint' twice: the graph was already freed")
        saved = self.saved

        def check() -> None:
            _check_saved("checkpoint", saved)

        eng.push(check, [v for v, _ in saved], (), "checkpoint_check")
        sinks = [None if p is None else _Sink() for p in self.parents]
        inputs = [Tensor._wrap(v, s) for v, s in zip(self.in_vars, sinks, strict=True)]
        self.fn, self.in_vars, self.saved = None, (), ()  # the inputs live on in `inputs` only
        with enable_grad():
            out = fn(*inputs)
        del inputs
        root = _recomputed(eng, out)
        del out  # the recomputed result itself is not needed: its gradient is `gvar`
        if root is None:
            return [None] * len(sinks)
        reached = propagate(root, gvar, {s for s in sinks if s is not None})
        return [None if s is None else reached.get(s) for s in sinks]


def checkpoint(fn: Callable[..., Tensor], *inputs: Operand) -> Tensor:
    """`fn(*inputs)`, keeping only `inputs` for the backward pass, which recomputes `fn`
    (see the module docstring). `fn` returns one Tensor."""
    if _tracing.hook is not None or not is_grad_enabled():
        return fn(*inputs)
    ts = tuple(tensor(x) for x in inputs)
    with no_grad():
        out = fn(*ts)
    if not isinstance(out, Tensor):
        raise TypeError(f"checkpoint: fn must return a Tensor, got {type(out).__name__}")
    if out._node is not None or any(out is t for t in ts):
        out = Tensor._wrap(out._var)  # the node goes on a fresh handle, never on an input's
    out._node = Checkpoint(fn, ts)
    return out


class RowCheckpoint(Checkpoint):
    """The node of a `checkpoint_rows` result: backward recomputes and differentiates `fn`
    one block of `rows` rows at a time and assembles the input's gradient. `flat`: the rows
    are those of the input with its leading axes flattened (`checkpoint_rows`); else the
    items of its leading axis, each whole (`checkpoint_batch`). `donate`: the input's buffer
    becomes its gradient, each block of rows overwritten once its recomputation is done."""

    __slots__ = ("rows", "flat", "donate")

    def __init__(self, fn: Callable[..., Tensor], inp: Tensor, rows: int, flat: bool = True,
                 donate: bool = False):
        super().__init__(fn, (inp,))
        self.rows = rows
        self.flat = flat
        self.donate = donate

    def backprop(self, eng: Any, gvar: Var) -> list[Var | None]:
        """Per block: recompute with recording on, propagate that block's gradient rows."""
        fn, saved = self.fn, self.saved
        if fn is None:
            raise RuntimeError("backward through 'checkpoint' twice: the graph was already freed")
        var = self.in_vars[0]
        self.fn, self.in_vars, self.saved = None, (), ()
        eng.wait_for_var(var)
        eng.wait_for_var(gvar)
        _check_saved("checkpoint", saved)
        shape = var.data.shape
        x, g = var.data, gvar.data
        if self.flat:
            x, g = x.reshape(-1, shape[-1]), g.reshape(-1, g.shape[-1])
        need = self.parents[0] is not None
        donate = need and self.donate and x.dtype.kind == "f"
        dx = x if donate else eng.pool.alloc(x.shape, x.dtype) if need else None
        for i0 in range(0, len(x), self.rows):
            i1 = min(len(x), i0 + self.rows)
            sink = _Sink() if need else None
            with enable_grad():
                out = fn(Tensor._wrap(Var(x[i0:i1], "rows"), sink))
                if not self.flat and (not isinstance(out, Tensor) or out.shape[:1] != (i1 - i0,)):
                    raise ValueError("checkpoint_batch: fn must map each item of the leading "
                                     "axis to one item of its result")
                root = _recomputed(eng, out)
                del out
            got = {} if root is None else propagate(root, Var(g[i0:i1], "grad"),
                                                     {sink} if need else frozenset())
            if dx is not None:
                part = got.get(sink)
                if donate and eng.asynchronous:  # nothing may still read these input rows
                    eng.wait_all()
                if part is None:
                    dx[i0:i1] = 0
                else:
                    eng.wait_for_var(part)
                    dx[i0:i1] = part.data
        if donate:  # whatever else kept the input would now see a MutationError
            var.bump("checkpoint_batch (input donated to its gradient)")
        return [None if dx is None else Var(dx.reshape(shape), "grad")]


def checkpoint_rows(fn: Callable[[Tensor], Tensor], x: Operand, width: int) -> Tensor:
    """`fn(x)` for a row-wise `fn`, over blocks of rows of x (its leading axes flattened):
    at most ROW_ELEMS // width rows each, `width` being the widest activation's features per
    row (see the module docstring), the rows shared evenly among the fewest blocks (256 rows
    under a limit of 190 go as 128 + 128, not 190 + 66: the same calls, a smaller largest
    block). `fn` gets and returns 2-D blocks."""
    if _tracing.hook is not None:
        return fn(x)
    t = tensor(x)
    arr = t.data
    flat = arr.reshape(-1, arr.shape[-1])
    blocks = max(1, -(-len(flat) // max(1, ROW_ELEMS // max(1, int(width)))))  # ceil
    rows = max(1, -(-len(flat) // blocks))
    out = None
    with no_grad():
        for i0 in range(0, len(flat), rows):
            i1 = min(len(flat), i0 + rows)
            y = fn(Tensor._wrap(Var(flat[i0:i1], "rows"))).data
            if y.ndim != 2 or len(y) != i1 - i0:
                raise ValueError(f"checkpoint_rows: fn must map ({i1 - i0}, ...) rows to as "
                                 f"many rows, got {y.shape}")
            if out is None:
                out = get_engine().pool.alloc((len(flat), y.shape[1]), y.dtype)
            out[i0:i1] = y
    if out is None:
        return fn(t)  # no rows at all
    res = Tensor._wrap(Var(out.reshape(*arr.shape[:-1], out.shape[1]), "checkpoint_rows"))
    if is_grad_enabled():
        res._node = RowCheckpoint(fn, t, rows)
    return res


def _check_items(out: Any, n: int) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"checkpoint_batch: fn must return a Tensor, got {type(out).__name__}")
    if out.shape[:1] != (n,):
        raise ValueError(f"checkpoint_batch: fn must keep the leading axis: {n} items in, "
                         f"got {out.shape}")


def checkpoint_batch(fn: Callable[[Tensor], Tensor], x: Operand,
                     item_elems: int | None = None, donate: bool = False) -> Tensor:
    """`fn(x)` for an `fn` that treats each item of x's leading axis (a sequence of a batch)
    on its own, keeping only x as `checkpoint` does; the backward recomputes and
    differentiates `fn` a group of items at a time (BATCH_ELEMS elements per group, at
    least one item; an item counts `item_elems`, default its size in x: token ids would
    count their embedded width), and the forward runs by the same groups, so one group's
    activations exist at once, not the whole batch's. The parameters' gradients are the
    sums of the groups' (the same values, summed in a different order). `donate=True`: x is
    the caller's to give (an intermediate nothing else reads after this call): the backward
    writes x's gradient over x, a group at a time, instead of holding both."""
    if _tracing.hook is not None or not is_grad_enabled():
        return fn(x)
    t = tensor(x)
    if t.ndim == 0:
        raise ValueError("checkpoint_batch: x needs a leading axis, got a scalar")
    n = t.shape[0]
    if item_elems is None:
        item_elems = t.size // max(1, n)
    items = max(1, BATCH_ELEMS // max(1, int(item_elems)))
    if items >= n:
        with no_grad():
            out = fn(t)
        _check_items(out, n)
        if out._node is not None or out is t:
            out = Tensor._wrap(out._var)  # the node goes on a fresh handle, not the input's
    else:  # the forward by groups too: its activations are one group's at a time
        arr, res = t.data, None
        with no_grad():
            for i0 in range(0, n, items):
                i1 = min(n, i0 + items)
                y = fn(Tensor._wrap(Var(arr[i0:i1], "items")))
                _check_items(y, i1 - i0)
                if res is None:
                    res = get_engine().pool.alloc((n, *y.shape[1:]), y.dtype)
                res[i0:i1] = y.data
                del y
        out = Tensor._wrap(Var(res, "checkpoint_batch"))
    out._node = RowCheckpoint(fn, t, items, flat=False, donate=donate)
    return out
