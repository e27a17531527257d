"""Row norms: layer norm and RMS norm, each one fused primitive that normalises every row (the
last axis, the features) on its own, its VJPs beside its forward. Batch norm, which mixes the
rows of a batch, is in `norm`.
"""

from __future__ import annotations

import functools

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .channels import channel_sum
from .checks import check_features, check_same_dtype
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["layer_norm", "rms_norm"]


# -- layer norm ----------------------------------------------------------------------------
def _ln_fwd(ctx: Ctx, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
            eps: float) -> np.ndarray:
    check_features("layer_norm", x, gamma=gamma, beta=beta)
    xhat = ctx.alloc(x.shape, x.dtype)
    np.subtract(x, x.mean(axis=-1, keepdims=True), out=xhat)
    var = np.square(xhat).mean(axis=-1, keepdims=True)
    var += eps
    np.sqrt(var, out=var)
    rstd = np.divide(1.0, var, out=var)
    xhat *= rstd
    ctx.xhat, ctx.rstd = xhat, rstd
    out = np.multiply(xhat, gamma, out=ctx.alloc(x.shape, x.dtype))
    out += beta
    return out


def _ln_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    # dx = rstd * (gg - mean(gg) - xhat * mean(gg * xhat)), gg = g * gamma
    xhat = ctx.xhat
    gg = np.multiply(g, ctx.args[1])
    m2 = np.multiply(gg, xhat).mean(axis=-1, keepdims=True)
    gg -= gg.mean(axis=-1, keepdims=True)
    gg -= xhat * m2
    gg *= ctx.rstd
    return gg


def _ln_vjp_gamma(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    c = g.shape[-1]
    return np.add.reduce((g * ctx.xhat).reshape(-1, c), axis=0)


def _ln_vjp_beta(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return np.add.reduce(g.reshape(-1, g.shape[-1]), axis=0)


layer_norm_p = Primitive("layer_norm", _ln_fwd, saves=(1,))
defvjp(layer_norm_p, _ln_vjp_x, _ln_vjp_gamma, _ln_vjp_beta)


def layer_norm(x: Operand, gamma: Operand, beta: Operand, eps: float = 1e-5) -> Tensor:
    """Normalise each row over the last axis, then scale by gamma and shift by beta."""
    return apply(layer_norm_p, tensor(x), tensor(gamma), tensor(beta), eps=float(eps))


# -- RMS norm ------------------------------------------------------------------------------
def _rms_fwd(ctx: Ctx, x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    c = x.shape[-1] if x.ndim else 0
    check_same_dtype("rms_norm", input=x, gamma=gamma)
    if x.ndim < 1 or gamma.shape != (c,):
        raise ValueError(f"rms_norm: gamma {gamma.shape} does not match input {x.shape} "
                         f"({c} features)")
    out = ctx.alloc(x.shape, x.dtype)
    rstd = ctx.alloc((*x.shape[:-1], 1), x.dtype)  # kept for the backward
    x2, o2, r2 = x.reshape(-1, c), out.reshape(-1, c), rstd.reshape(-1, 1)

    def rows(lo: int, hi: int) -> None:
        xs, os_, rs = x2[lo:hi], o2[lo:hi], r2[lo:hi]
        np.multiply(xs, xs, out=os_)
        np.mean(os_, axis=-1, keepdims=True, out=rs)
        rs += eps
        np.sqrt(rs, out=rs)
        np.divide(1.0, rs, out=rs)
        np.multiply(xs, rs, out=os_)
        os_ *= gamma

    parallel_for(x2.shape[0], rows, 6 * x.size, calls=7)
    ctx.rstd = rstd
    return out


def _rms_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    # y = x r gamma, r = (mean(x^2) + eps)^-1/2: dx = r gg - x r^3 mean(gg x), gg = g gamma
    x, rstd, gamma = ctx.args[0], ctx.rstd, ctx.args[1]
    c = x.shape[-1]
    out = ctx.alloc(x.shape, np.result_type(g, gamma))
    x2, g2, r2, o2 = x.reshape(-1, c), g.reshape(-1, c), rstd.reshape(-1, 1), out.reshape(-1, c)

    def rows(lo: int, hi: int) -> None:
        xs, rs, gg = x2[lo:hi], r2[lo:hi], o2[lo:hi]
        np.multiply(g2[lo:hi], gamma, out=gg)
        m = np.multiply(gg, xs).mean(axis=-1, keepdims=True)
        m *= rs
        m *= rs
        gg -= xs * m
        gg *= rs

    parallel_for(x2.shape[0], rows, 8 * x.size, calls=8)
    return out


def _rms_vjp_gamma(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    """sum over rows of g x r: each thread sums its rows, the partial sums are added in
    row order (the same bits for a given thread count)."""
    x, c = ctx.args[0], ctx.args[0].shape[-1]
    x2, g2, r2 = x.reshape(-1, c), g.reshape(-1, c), ctx.rstd.reshape(-1, 1)
    parts: dict[int, np.ndarray] = {}

    def rows(lo: int, hi: int) -> None:
        xr = np.multiply(x2[lo:hi], r2[lo:hi])
        xr *= g2[lo:hi]
        parts[lo] = channel_sum(xr)

    parallel_for(x2.shape[0], rows, 3 * x.size, calls=4)
    return functools.reduce(np.add, (parts[k] for k in sorted(parts)))


rms_norm_p = Primitive("rms_norm", _rms_fwd, saves=(0, 1), remat=True)
defvjp(rms_norm_p, _rms_vjp_x, _rms_vjp_gamma)


def rms_norm(x: Operand, gamma: Operand, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2 over the last axis) + eps) * gamma (RMSNorm, Zhang & Sennrich 2019)."""
    return apply(rms_norm_p, tensor(x), tensor(gamma), eps=float(eps))
