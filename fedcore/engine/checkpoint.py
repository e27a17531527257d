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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .autograd import Primitive, _tracing
from .backprop import _check_saved, propagate
from .deps import expected_version
from .ops import Operand, tensor
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad
from .var import Var

__all__ = ["Checkpoint", "checkpoint"]


def _never(*_: Any) -> None:  # a checkpoint's forward is its `fn`, not a kernel
    raise RuntimeError("a checkpoint is not pushed as an op")


class _Sink:
    """Where a recomputed sub-graph ends: the place of one input; backward stops there."""

    __slots__ = ()
    parents: tuple = ()


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
        root = out._node if isinstance(out, Tensor) else None
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
