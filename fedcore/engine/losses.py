"""Normalisation and loss primitives: log_softmax, fused softmax cross-entropy, MSE.

All are numerically stable (max-shifted); cross-entropy reduces with float64 accumulation into
a float32 result. The fused cross-entropy keeps the softmax probabilities it computes anyway
and turns them into the gradient in place during backward: no extra buffer, no one-hot matrix.
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .head import DeferredLogits, check_labels
from .ops import Operand, tensor
from .parallel import elementwise, parallel_for
from .tensor import Tensor

__all__ = ["log_softmax", "mse", "softmax_cross_entropy"]


def _log_softmax_fwd(ctx: Ctx, x: np.ndarray, axis: int) -> np.ndarray:
    out = ctx.alloc(x.shape)
    np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    lse = np.exp(out).sum(axis=axis, keepdims=True)
    np.log(lse, out=lse)
    out -= lse
    return out


def _log_softmax_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    axis = ctx.params["axis"]
    return g - np.exp(ctx.ans) * g.sum(axis=axis, keepdims=True)


log_softmax_p = Primitive("log_softmax", _log_softmax_fwd, saves_output=True)
defvjp(log_softmax_p, _log_softmax_vjp)


def log_softmax(x: Operand, axis: int = -1) -> Tensor:
    """log(softmax(x)) along `axis`, computed stably."""
    return apply(log_softmax_p, tensor(x), axis=axis)


def _check_labels(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy expects (N, C) logits, got {logits.shape}")
    check_labels(logits.shape[0], logits.shape[1], labels)


def _xent_fwd(ctx: Ctx, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _check_labels(logits, labels)
    n = logits.shape[0]
    probs = ctx.alloc(logits.shape)
    rows = np.arange(n)
    picked = ctx.alloc((n,))  # the shifted logit of each row's label
    lognorm = ctx.alloc((n,))  # log(sum(exp(shifted row)))

    def slab(lo: int, hi: int) -> None:  # rows [lo, hi): exp is the costly part
        p = probs[lo:hi]
        np.subtract(logits[lo:hi], logits[lo:hi].max(axis=1, keepdims=True), out=p)
        picked[lo:hi] = p[rows[:hi - lo], labels[lo:hi]]
        np.exp(p, out=p)
        norm = p.sum(axis=1, keepdims=True)
        p /= norm
        np.log(norm[:, 0], out=lognorm[lo:hi])

    parallel_for(n, slab, 4 * logits.size)  # exp costs several simple passes
    ctx.probs, ctx.rows = probs, rows
    out = ctx.alloc(())
    out[...] = (lognorm.sum(dtype=np.float64) - picked.sum(dtype=np.float64)) / max(n, 1)
    return out


def _xent_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    grad = ctx.probs  # consumed: becomes (softmax - onehot) * g / N in place
    ctx.probs = None
    if grad is None:
        raise RuntimeError("softmax_cross_entropy backward ran twice on one graph")
    grad[ctx.rows, ctx.args[1]] -= 1.0
    return elementwise(np.multiply, grad, grad, g / max(grad.shape[0], 1))


softmax_cross_entropy_p = Primitive("softmax_cross_entropy", _xent_fwd, saves=(1,))
defvjp(softmax_cross_entropy_p, _xent_vjp, None)


def softmax_cross_entropy(logits: Operand, labels: Tensor | np.ndarray) -> Tensor:
    """Mean over the batch of -log softmax(logits)[i, labels[i]] (fused and stable). Logits
    a head deferred (`fedcore.engine.head`) are never computed: the head and the loss run as
    one op, in row blocks."""
    if type(logits) is DeferredLogits:
        return logits.cross_entropy(labels)
    return apply(softmax_cross_entropy_p, tensor(logits), tensor(labels))


softmax_cross_entropy.mean_over_rows = True  # type: ignore[attr-defined] # fedcore.nn.shards


def _mse_fwd(ctx: Ctx, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred shape {pred.shape} != target shape {target.shape}")
    d = (pred - target).ravel()
    out = ctx.alloc(())
    out[...] = np.dot(d, d) / max(d.size, 1)
    return out


def _mse_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    pred, target = ctx.args
    return (pred - target) * (g * (2.0 / max(pred.size, 1)))


mse_p = Primitive("mse", _mse_fwd, saves=(0, 1))
defvjp(mse_p, _mse_vjp, lambda ctx, g: np.negative(_mse_vjp(ctx, g)))


def mse(pred: Operand, target: Operand) -> Tensor:
    """Mean squared error over all elements."""
    return apply(mse_p, tensor(pred), tensor(target))


mse.mean_over_rows = True  # type: ignore[attr-defined] # every row has as many elements


Tensor.log_softmax = log_softmax
