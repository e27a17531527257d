"""MobileNet-style ops, channels-last: depthwise convolution and global average pooling.

A depthwise convolution filters each channel on its own (groups = channels): weight
(KH, KW, C). Its forward, weight gradient and input gradient are each one `einsum` per
column phase over a zero-copy window view of the (padded) input or gradient. The view is laid
out (N, Ho, KH, KW, Wo*C): with stride 1 along the width, the Wo output columns of one tap are
one contiguous run of Wo*C values, so every inner loop is hundreds of elements long, where a
multiply-add per tap over (N, Ho, Wo, C) views runs C-long loops (16 here: ~4.5x slower). A
width stride s splits the padded input's columns by their position mod s first ("phases",
one copy of the input in all), so each phase is again a stride-1 correlation with the taps
that land on it. The input gradient is the transposed convolution: per (row, column) phase
of the input, a stride-1 correlation of the padded output gradient with the flipped taps of
that phase. A pointwise (1x1) convolution is a dense layer on the (N*H*W, C) rows and needs no
op of its own (`fedcore.nn.PointwiseConv2d`).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .autograd import Ctx, Primitive, apply, defvjp
from .channels import channel_op, channel_sum
from .checks import check_ndim, check_same_dtype
from .conv import Pair, _geometry, _pad, _pair
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["depthwise_conv2d", "global_avg_pool2d"]


def _window(src: np.ndarray, kernel: tuple[int, int], row_stride: int,
            out_hw: tuple[int, int]) -> np.ndarray:
    """Read-only (N, Ho, KH, KW, Wo*C) view: [n, u, i, j] is src[n, u*row_stride + i, j:j+Wo]
    flattened (src's last two axes must be contiguous)."""
    n, c = src.shape[0], src.shape[3]
    sn, sh, sw, sc = src.strides
    if sw != c * sc:
        src = np.ascontiguousarray(src)
        sn, sh, sw, sc = src.strides
    (kh, kw), (ho, wo) = kernel, out_hw
    return as_strided(src, (n, ho, kh, kw, wo * c), (sn, row_stride * sh, sh, sw, sc),
                      writeable=False)


def _tiled(w: np.ndarray, wo: int) -> np.ndarray:
    """(KH, KW, C) taps repeated along Wo: (KH, KW, Wo*C), matching a `_window` run."""
    kh, kw, c = w.shape
    return np.ascontiguousarray(np.broadcast_to(w[:, :, None, :], (kh, kw, wo, c))).reshape(
        kh, kw, wo * c)


def _correlate(src: np.ndarray, w: np.ndarray, row_stride: int, out: np.ndarray) -> None:
    """out[n, u, v] = sum_ij src[n, u*row_stride + i, v + j] * w[i, j] per channel (width
    stride 1); out (N, Ho, Wo, C) is written whole, split over images across threads."""
    n, ho, wo, c = out.shape
    if w.shape[0] == 0 or w.shape[1] == 0:
        out.fill(0)
        return
    wt = _tiled(w, wo)
    contiguous = out.flags.c_contiguous

    def images(lo: int, hi: int) -> None:
        win = _window(src[lo:hi], w.shape[:2], row_stride, (ho, wo))
        if contiguous:
            np.einsum("nhijm,ijm->nhm", win, wt, out=out[lo:hi].reshape(hi - lo, ho, wo * c))
        else:
            out[lo:hi] = np.einsum("nhijm,ijm->nhm", win, wt).reshape(hi - lo, ho, wo, c)

    parallel_for(n, images, out.size * w.shape[0] * w.shape[1])


def _phases(xp: np.ndarray, sw: int, kw: int) -> list[np.ndarray]:
    """xp's columns by position mod sw, each contiguous (xp itself for sw == 1); phase b holds
    columns b, b + sw, ... (only phases some tap lands on)."""
    if sw == 1:
        return [xp]
    return [np.ascontiguousarray(xp[:, :, b::sw]) for b in range(min(sw, kw))]


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
    sh, sw = stride
    phases = _phases(_pad(ctx, x, padding, 0.0), sw, kw)
    ctx.phases = None if phases[0] is x else phases  # dW's operands (x itself: saved)
    out = ctx.alloc((x.shape[0], ho, wo, c), x.dtype)
    tmp = ctx.pool.alloc(out.shape, x.dtype) if len(phases) > 1 else None
    for p, src in enumerate(phases):
        dst = out if p == 0 else tmp
        _correlate(src, w[:, p::sw], sh, dst)
        if p:
            out += dst
    return channel_op(np.add, out, b, out)


def _dw_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    # input row y (padded Y = y + ph) gets tap i from output row (Y - i) / sh when that is a
    # whole number: per phase a = Y mod sh, taps a, a + sh, ... in reverse over g padded by
    # (taps - 1), a stride-1 correlation (likewise for columns)
    w = ctx.args[1]
    kh, kw, c = w.shape
    n, h, wd, _ = ctx.shapes[0]
    (sh, sw), (ph, pw) = ctx.params["stride"], ctx.params["padding"]
    ho, wo = g.shape[1], g.shape[2]
    rh, rw = -(-kh // sh) - 1, -(-kw // sw) - 1  # the most taps a phase has, minus one
    gp = _pad(ctx, np.ascontiguousarray(g), (rh, rw), 0.0)
    dx = ctx.alloc((n, h, wd, c), g.dtype)
    strided = sh > 1 or sw > 1
    if strided:
        dx.fill(0)  # rows and columns no window reaches get no gradient
    for a in range(min(sh, kh)):
        kr = len(range(a, kh, sh))
        u_lo, u_hi = -(-(ph - a) // sh), min(ho + kr - 1, -(-(h + ph - a) // sh))
        for b in range(min(sw, kw)):
            kq = len(range(b, kw, sw))
            v_lo, v_hi = -(-(pw - b) // sw), min(wo + kq - 1, -(-(wd + pw - b) // sw))
            if u_hi <= u_lo or v_hi <= v_lo:
                continue
            y0, x0 = a + sh * u_lo - ph, b + sw * v_lo - pw
            dst = dx[:, y0:y0 + sh * (u_hi - u_lo - 1) + 1:sh,
                     x0:x0 + sw * (v_hi - v_lo - 1) + 1:sw]
            src = gp[:, rh - kr + 1 + u_lo:, rw - kq + 1 + v_lo:]
            _correlate(src, w[a::sh, b::sw][::-1, ::-1], 1, dst)
    return dx


def _dw_vjp_w(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    w = ctx.args[1]
    kh, kw, c = w.shape
    sh, sw = ctx.params["stride"]
    n, ho, wo, _ = g.shape
    g3 = np.ascontiguousarray(g).reshape(n, ho, wo * c)
    dw = np.empty(w.shape, g.dtype)
    for p, src in enumerate(ctx.phases or [ctx.args[0]]):
        taps = (kh, len(range(p, kw, sw)))
        part = np.einsum("nhijm,nhm->ijm", _window(src, taps, sh, (ho, wo)), g3)
        np.sum(part.reshape(*taps, wo, c), axis=2, out=dw[:, p::sw])
    return dw


def _dw_vjp_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return channel_sum(g)


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
