"""Batch normalisation, channels-last (the normalised features are the last axis); layer and
RMS norm, which normalise each row on its own, are in `rownorm`.

Batch norm is three primitives so every read and write is visible to the engine (and to a
tracer replaying the step): `batch_moments` (differentiable) gives a (2, C) [mean, biased
var] array over every axis but the last; `batch_norm_apply` normalises with given moments
(the batch's in training, the running ones in evaluation); `running_moments_update_` is an
in-place, non-differentiable op blending the batch moments into a running-statistics buffer
(unbiased variance, as PyTorch does). Layer norm and RMS norm are one fused primitive each.

In training, `batch_norm` runs `batch_moments_centred` without recording it (the moments with
the x - mean rows their variance was computed from, so the normalisation does not subtract
the mean again: one pass over the activations fewer a layer) and normalises with
`batch_norm_train`, whose input gradient is the whole of batch norm's (through the batch
moments too) and which can apply a ReLU on the way out: a convolution's BatchNorm + ReLU is one
forward and one backward op (PyTorch-style separate ops cost the MobileNet-style CNN 6 ops a
layer and ~2.5x the passes over its activations: a subtract, scale, shift and max forward; a
mask, two channel sums and one combine backward here).
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, apply_inplace, defvjp, defvjp_into
from .channels import channel_dot, channel_op, channel_sum, fold, tiled
from .checks import check_features
from .ops import Operand, relu_, tensor
from .tensor import Tensor, no_grad

__all__ = [
    "batch_moments", "batch_moments_centred", "batch_norm", "batch_norm_apply", "batch_norm_train",
    "running_moments_update_",
]


# -- batch norm ----------------------------------------------------------------------------
def _moments_into(ctx: Ctx, x: np.ndarray, out: np.ndarray,
                  centred: np.ndarray | None = None) -> np.ndarray:
    """Write [mean, biased var] of x (..., C) into out (2, C), two-pass (the variance from
    x - mean, which lands in `centred`, (M, C), or a scratch buffer); returns out."""
    if x.ndim < 2:
        raise ValueError(f"batch_moments: input must be at least 2-D (..., C), got {x.shape}")
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    if x2.shape[0] < 2:
        raise ValueError(f"batch_moments: need more than one value per feature, got {x.shape}")
    inv = 1.0 / x2.shape[0]
    np.multiply(channel_sum(x2), inv, out=out[0])
    if centred is None:
        centred = ctx.pool.alloc(x2.shape, x.dtype)
    xc = channel_op(np.subtract, x2, out[0], centred)
    np.multiply(channel_dot(xc, xc), inv, out=out[1])
    return out


def _moments_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    return _moments_into(ctx, x, ctx.alloc((2, x.shape[-1]), x.dtype))


def _centred_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    c = x.shape[-1] if x.ndim else 0
    out = ctx.alloc((2 + x.size // max(c, 1), c), x.dtype)
    _moments_into(ctx, x, out, out[2:])
    return out


def _moments_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    # d mean / dx = 1/M; d var / dx = 2 (x - mean) / M
    x = np.ascontiguousarray(ctx.args[0])
    m = x.size // x.shape[-1]
    dx = channel_op(np.subtract, x, ctx.ans[0], np.empty(x.shape, np.result_type(x, g)))
    channel_op(np.multiply, dx, g[1] * (2.0 / m), dx)
    return channel_op(np.add, dx, g[0] * (1.0 / m), dx)


batch_moments_p = Primitive("batch_moments", _moments_fwd, saves=(0,), saves_output=True)
defvjp(batch_moments_p, _moments_vjp)
#: [mean, var] and below them x - mean, (2 + M, C): what `batch_norm` hands `batch_norm_train`
#: so the centring pass the variance needed is not made again (not differentiable: x's
#: gradient runs through batch_norm_train)
batch_moments_centred_p = Primitive("batch_moments_centred", _centred_fwd)
defvjp(batch_moments_centred_p, None)


def _bn_rstd(x: np.ndarray, stats: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
             eps: float, centred: bool = False) -> np.ndarray:
    """1 / sqrt(var + eps) (C,), after checking x (..., C) against gamma, beta and the (2, C)
    [mean, var] statistics (`centred`: or the (2 + M, C) ones of `batch_moments_centred`):
    what both batch-norm forwards start with."""
    c = check_features("batch_norm", x, gamma=gamma, beta=beta)
    if stats.shape != (2, c) and not (centred and stats.shape == (2 + x.size // c, c)):
        more = f" or (2 + {x.size // c}, {c}) [mean, var, x - mean]" if centred else ""
        raise ValueError(f"batch_norm: statistics {stats.shape} must be (2, {c}) [mean, var]"
                         f"{more} for input {x.shape}")
    rstd = stats[1] + eps
    np.sqrt(rstd, out=rstd)
    return np.divide(1.0, rstd, out=rstd)


def _bn_apply_fwd(ctx: Ctx, x: np.ndarray, stats: np.ndarray, gamma: np.ndarray,
                  beta: np.ndarray, eps: float) -> np.ndarray:
    ctx.rstd = rstd = _bn_rstd(x, stats, gamma, beta, eps)
    ctx.sums = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    scale = rstd * gamma
    x = np.ascontiguousarray(x)
    out = channel_op(np.subtract, x, stats[0], ctx.alloc(x.shape, x.dtype))
    channel_op(np.multiply, out, scale, out)
    return channel_op(np.add, out, beta, out)


def _bn_sums(ctx: Ctx, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of g, sum of g * (x - mean)) over all but the last axis, computed once."""
    sums = getattr(ctx, "sums", None)
    if sums is None:
        x, stats = np.ascontiguousarray(ctx.args[0]), ctx.args[1]
        g = np.ascontiguousarray(g)
        xc = channel_op(np.subtract, x, stats[0], ctx.pool.alloc(x.shape, x.dtype))
        sums = ctx.sums = (channel_sum(g), channel_dot(xc, g))
    return sums


def _bn_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    g = np.ascontiguousarray(g)
    scale = ctx.rstd * ctx.args[2]
    return channel_op(np.multiply, g, scale, np.empty(g.shape, np.result_type(g, scale)))


def _bn_vjp_stats(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    sg, sgx = _bn_sums(ctx, g)
    scale = ctx.rstd * ctx.args[2]
    out = np.empty((2, g.shape[-1]), g.dtype)
    np.multiply(sg, -scale, out=out[0])
    np.multiply(sgx, scale * ctx.rstd * ctx.rstd * -0.5, out=out[1])
    return out


def _bn_vjp_gamma(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return _bn_sums(ctx, g)[1] * ctx.rstd


def _bn_vjp_beta(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return _bn_sums(ctx, g)[0].copy()


batch_norm_apply_p = Primitive("batch_norm", _bn_apply_fwd, saves=(0, 1, 2))
defvjp(batch_norm_apply_p, _bn_vjp_x, _bn_vjp_stats, _bn_vjp_gamma, _bn_vjp_beta)


def _bnt_fwd(ctx: Ctx, x: np.ndarray, stats: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
             eps: float, relu: bool) -> np.ndarray:
    rstd = _bn_rstd(x, stats, gamma, beta, eps, centred=True)
    # long rows: every pass below runs as (nearly) one flat loop
    x2, k = fold(np.ascontiguousarray(x), wide=True)
    if stats.shape[0] == 2:
        xc = ctx.alloc(x.shape, x.dtype)
        np.subtract(x2, tiled(stats[0], k), out=xc.reshape(x2.shape))
        ctx.own = True  # backward may overwrite it
    else:  # batch_moments_centred's: x - mean is made already (an input: read only;
        # backward reads it from the saved input, which a replay may have recomputed)
        xc = stats[2:].reshape(x.shape)
        ctx.own = False
    ctx.xc = xc if ctx.own else None
    ctx.rstd, ctx.memo = rstd, None  # a replay reuses ctx: reset the memo
    out = ctx.alloc(x.shape, x.dtype)
    o2 = out.reshape(x2.shape)
    np.multiply(xc.reshape(x2.shape), tiled(rstd * gamma, k), out=o2)
    np.add(o2, tiled(beta, k), out=o2)
    if relu:
        np.maximum(o2, np.zeros(o2.shape[1], o2.dtype), out=o2)  # a row: 2x a scalar's speed
    return out


def _bnt_xc(ctx: Ctx) -> np.ndarray:
    """x - mean at backward: the forward's own buffer, or the centred statistics' rows."""
    if ctx.own:
        return ctx.xc
    return ctx.args[1][2:].reshape(ctx.shapes[0])


def _bnt_memo(ctx: Ctx, g: np.ndarray, buf: np.ndarray | None = None
              ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(g through the ReLU's mask, folded (R/k, k*C), in `buf` if given; its channel sums;
    its channel dot with x - mean), computed once for the three VJPs."""
    memo = ctx.memo
    if memo is None:
        g2, _ = fold(np.ascontiguousarray(g), wide=True)
        # a pool buffer of g's shape (recycled: no fresh pages every step; vjp_x returns
        # it whole, so the pool counts it while it lives), folded like g
        xc = _bnt_xc(ctx)
        full = ctx.alloc(g.shape, np.result_type(g, xc)) if buf is None else buf
        gm = full.reshape(g2.shape)
        ctx.dx = full
        if ctx.params["relu"]:
            # the mask as 0.0/1.0 straight into gm, then g times it: a boolean mask
            # multiplied in is cast to float inside the loop (measured ~1.2x slower)
            np.greater(ctx.ans.reshape(g2.shape), 0, out=gm)
            gm *= g2
        else:
            np.copyto(gm, g2)  # vjp_x scales it in place
        memo = ctx.memo = (gm, channel_sum(gm.reshape(g.shape)), channel_dot(xc, gm))
    return memo


def _bnt_vjp_x(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # y = xhat gamma + beta, xhat = (x - mean) rstd, through the batch's mean and var:
    # dx = gamma rstd (g - mean(g) - xhat mean(g xhat)), g masked by the ReLU
    if out is not None and (ctx.memo is not None or not out.flags.c_contiguous
                            or out.dtype != np.result_type(g, _bnt_xc(ctx))):
        np.copyto(out, _bnt_vjp_x(ctx, g))  # the memo is made, or out cannot hold it
        return out
    gm, sg, sgx = _bnt_memo(ctx, g, out)
    rstd, xc = ctx.rstd, _bnt_xc(ctx)
    c = xc.shape[-1]
    k, m = gm.shape[1] // c, xc.size // c
    scale = rstd * ctx.args[2]
    v = np.empty((3, k, c), gm.dtype)  # the three per-channel factors, each tiled k times
    v[0] = scale
    v[1] = scale * rstd * rstd * sgx * (-1.0 / m)
    v[2] = scale * sg * (-1.0 / m)
    v = v.reshape(3, k * c)
    # the x - mean term: in place when xc is this op's own (nothing reads it after the sums
    # above), else in a scratch buffer
    x2 = xc.reshape(gm.shape)
    x2 = np.multiply(x2, v[1], out=x2 if ctx.own else ctx.pool.alloc(gm.shape, gm.dtype))
    x2 += v[2]
    np.multiply(gm, v[0], out=gm)
    gm += x2
    ctx.memo = (None, sg, sgx)  # gm is dx now
    ctx.xc = None
    return ctx.dx


def _bnt_vjp_gamma(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.multiply(_bnt_memo(ctx, g)[2], ctx.rstd, out=out)


def _bnt_vjp_beta(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    sg = _bnt_memo(ctx, g)[1]
    if out is None:
        return sg.copy()
    np.copyto(out, sg)
    return out


# two primitives: only the ReLU's backward reads the output (kept from in-place writes);
# both keep the statistics (centred ones hold the x - mean that backward reads)
batch_norm_train_p = Primitive("batch_norm_train", _bnt_fwd, saves=(1, 2))
batch_norm_relu_p = Primitive("batch_norm_relu", _bnt_fwd, saves=(1, 2), saves_output=True)
for _p in (batch_norm_train_p, batch_norm_relu_p):
    defvjp(_p, _bnt_vjp_x, None, _bnt_vjp_gamma, _bnt_vjp_beta)
    defvjp_into(_p, _bnt_vjp_x, None, _bnt_vjp_gamma, _bnt_vjp_beta)  # straight into `out`


def _running_update_fwd(ctx: Ctx, running: np.ndarray, stats: np.ndarray, momentum: float,
                        count: int) -> None:
    if running.shape != stats[:2].shape or running.shape[0] != 2:
        raise ValueError(f"running_moments_update_: running {running.shape} vs batch "
                         f"{stats.shape}")
    running *= 1.0 - momentum
    running[0] += momentum * stats[0]
    running[1] += (momentum * count / max(count - 1, 1)) * stats[1]


running_moments_update_p = Primitive("running_moments_update_", _running_update_fwd,
                                     inplace=True)
defvjp(running_moments_update_p, None, None)


def batch_moments(x: Operand) -> Tensor:
    """(2, C) [mean, biased variance] of `x` over every axis but the last."""
    return apply(batch_moments_p, tensor(x))


def batch_norm_apply(x: Operand, stats: Operand, gamma: Operand, beta: Operand,
                     eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * gamma + beta, with `stats` = [mean, var] of shape (2, C)."""
    return apply(batch_norm_apply_p, tensor(x), tensor(stats), tensor(gamma), tensor(beta),
                 eps=float(eps))


def running_moments_update_(running: Tensor, stats: Operand, momentum: float,
                            count: int) -> Tensor:
    """running = (1 - momentum) * running + momentum * [mean, var * count / (count - 1)], with
    [mean, var] the first two rows of `stats` (batch_moments' or batch_moments_centred's)."""
    with no_grad():
        return apply_inplace(running_moments_update_p, running, tensor(stats).detach(),
                             momentum=float(momentum), count=int(count))


def batch_moments_centred(x: Operand) -> Tensor:
    """(2 + M, C): [mean, biased variance] of `x` (..., C) over every axis but the last, then
    the M = x.size / C rows of x - mean (not differentiable)."""
    return apply(batch_moments_centred_p, tensor(x))


def batch_norm_train(x: Operand, stats: Operand, gamma: Operand, beta: Operand,
                     eps: float = 1e-5, relu: bool = False) -> Tensor:
    """Batch norm with `stats` = batch_moments(x) or batch_moments_centred(x) (which saves
    recomputing x - mean; not differentiated: x's gradient already runs through them), then
    max(., 0) if `relu`. Give it x's own moments, nothing else."""
    return apply(batch_norm_relu_p if relu else batch_norm_train_p, tensor(x),
                 tensor(stats).detach(), tensor(gamma), tensor(beta), eps=float(eps),
                 relu=bool(relu))


def batch_norm(x: Operand, gamma: Operand, beta: Operand, running: Tensor | None = None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
               relu: bool = False) -> Tensor:
    """Batch normalisation over every axis but the last (channels-last), then max(., 0) if
    `relu` (one fused op in training).

    Training normalises with the batch's moments and, when `running` (a (2, C) [mean, var]
    buffer) is given, blends them into it in place. Evaluation normalises with `running`.
    """
    xt = tensor(x)
    if not training:
        if running is None:
            raise ValueError("batch_norm: evaluation mode needs running statistics")
        out = batch_norm_apply(xt, running.detach(), gamma, beta, eps)
        return relu_(out) if relu else out
    with no_grad():
        stats = batch_moments_centred(xt)
    if running is not None:
        count = xt.size // xt.shape[-1]
        running_moments_update_(running, stats, momentum, count)
    return batch_norm_train(xt, stats, gamma, beta, eps, relu)
