"""MobileNet-style ops, channels-last: depthwise convolution and global average pooling.

A depthwise convolution filters each channel on its own (groups = channels): weight
(KH, KW, C), one multiply-add per kernel tap over a strided "offset" view of the padded input
(the same views pooling uses), so there is no im2col matrix. Its backward is the same walk:
each tap's weight gradient is a channel sum of (view * g), taken as a ones-vector product
(BLAS sums a tall, narrow matrix's columns ~6x faster than np.add.reduce), and the input
gradient adds g * w into the tap's window of a padded gradient. A pointwise (1x1) convolution
is a dense layer on the (N*H*W, C) rows and needs no op of its own
(`fedcore.nn.PointwiseConv2d`).
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_ndim, check_same_dtype
from .conv import Pair, _crop, _geometry, _offsets, _pad, _pair
from .ops import Operand, tensor
from .tensor import Tensor

__all__ = ["depthwise_conv2d", "global_avg_pool2d"]


def _dw_fwd(ctx: Ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, int],
            padding: tuple[int, int]) -> np.ndarray:
    check_ndim("depthwise_conv2d", "input", x, 4, "(N, H, W, C)")
    check_ndim("depthwise_conv2d", "weight", w, 3, "(KH, KW, C)")
    check_same_dtype("depthwise_conv2d", input=x, weight=w, bias=b)
    kh, kw, c = w.shape
    if x.shape[3] != c or b.shape != (c,):
        raise ValueError(f"depthwise_conv2d: input {x.shape}, weight {w.shape} and bias "
                         f"{b.shape} must have the same number of channels")
    ho, wo = _geometry("depthwise_conv2d", x, (kh, kw), stride, padding)
    xp = _pad(ctx, x, padding, 0.0)  # kept for the weight gradient when padded
    ctx.xp = xp if xp is not x else None
    out = ctx.alloc((x.shape[0], ho, wo, c), x.dtype)
    out[...] = b
    tmp = ctx.pool.alloc(out.shape, x.dtype)
    for t, view in enumerate(_offsets(xp, (kh, kw), stride, (ho, wo))):
        np.multiply(view, w[t // kw, t % kw], out=tmp)
        out += tmp
    return out


def _dw_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    x, w = ctx.args[0], ctx.args[1]
    kh, kw, _ = w.shape
    padding = ctx.params["padding"]
    ph, pw = padding
    n, h, wd, c = x.shape
    dxp = ctx.pool.zeros((n, h + 2 * ph, wd + 2 * pw, c), g.dtype)
    tmp = ctx.pool.alloc(g.shape, g.dtype)
    for t, view in enumerate(_offsets(dxp, (kh, kw), ctx.params["stride"], g.shape[1:3])):
        np.multiply(g, w[t // kw, t % kw], out=tmp)
        view += tmp
    return _crop(ctx, dxp, x.shape, padding)


def _dw_vjp_w(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    w = ctx.args[1]
    kh, kw, c = w.shape
    xp = ctx.xp if ctx.xp is not None else ctx.args[0]
    dw = np.empty(w.shape, g.dtype)
    tmp = ctx.pool.alloc(g.shape, g.dtype)
    ones = np.ones(g.size // c, g.dtype)
    for t, view in enumerate(_offsets(xp, (kh, kw), ctx.params["stride"], g.shape[1:3])):
        np.multiply(view, g, out=tmp)
        np.matmul(ones, tmp.reshape(-1, c), out=dw[t // kw, t % kw])
    return dw


def _dw_vjp_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    c = g.shape[-1]
    return np.ones(g.size // c, g.dtype) @ g.reshape(-1, c)


depthwise_conv2d_p = Primitive("depthwise_conv2d", _dw_fwd, saves=(0, 1))
defvjp(depthwise_conv2d_p, _dw_vjp_x, _dw_vjp_w, _dw_vjp_b)


def depthwise_conv2d(x: Operand, weight: Operand, bias: Operand, stride: Pair = 1,
                     padding: Pair = 0) -> Tensor:
    """Per-channel convolution of (N, H, W, C) by weight (KH, KW, C), plus bias (C,)."""
    return apply(depthwise_conv2d_p, tensor(x), tensor(weight), tensor(bias),
                 stride=_pair("depthwise_conv2d", "stride", stride),
                 padding=_pair("depthwise_conv2d", "padding", padding))


def _gap_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    check_ndim("global_avg_pool2d", "input", x, 4, "(N, H, W, C)")
    out = ctx.alloc((x.shape[0], x.shape[3]), x.dtype)
    return np.mean(x, axis=(1, 2), out=out)


def _gap_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    n, h, w, c = ctx.shapes[0]
    out = np.empty((n, h, w, c), g.dtype)
    np.copyto(out, (g * (1.0 / (h * w)))[:, None, None, :])
    return out


global_avg_pool2d_p = Primitive("global_avg_pool2d", _gap_fwd)
defvjp(global_avg_pool2d_p, _gap_vjp)


def global_avg_pool2d(x: Operand) -> Tensor:
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""
    return apply(global_avg_pool2d_p, tensor(x))
