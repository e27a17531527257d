"""2-D max and average pooling, channels-last (N, H, W, C).

Pooling works on the KH*KW strided "offset" views of the input (each (N, Ho, Wo, C)), so it
needs no window copy: max pooling keeps a uint8 argmax per output (first maximum wins, as in
PyTorch) and routes gradients through it; average pooling counts padding (count_include_pad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float, check_ndim
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor
from .windows import Pair, _crop, _geometry, _offsets, _pad, _pair

__all__ = ["avg_pool2d", "max_pool2d"]


def _pool_check(op: str, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[int, int]:
    check_ndim(op, "input", x, 4, "(N, H, W, C)")
    check_float(op, "input", x)
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel {kernel}")
    return _geometry(op, x, kernel, stride, padding)


def _covering(xshape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """True when every input element lies in exactly one window (no overlap, no leftovers)."""
    return (kernel == stride and padding == (0, 0)
            and out_hw[0] * stride[0] == xshape[1] and out_hw[1] * stride[1] == xshape[2])


def _max_pool_fwd(ctx: Ctx, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int]) -> np.ndarray:
    ho, wo = _pool_check("max_pool2d", x, kernel, stride, padding)
    if kernel[0] * kernel[1] > 255:
        raise ValueError(f"max_pool2d: kernel {kernel} has more than 255 elements")
    xp = _pad(ctx, x, padding, -np.inf)
    shape = (x.shape[0], ho, wo, x.shape[3])
    out = ctx.alloc(shape, x.dtype)
    idx = ctx.alloc(shape, np.uint8)

    views = _offsets(xp, kernel, stride, (ho, wo))

    def rows(lo: int, hi: int) -> None:
        o, i = out[lo:hi], idx[lo:hi]
        mask = ctx.alloc(o.shape, np.bool_)
        mask_u8 = mask.view(np.uint8)
        np.copyto(o, views[0][lo:hi])
        i.fill(0)
        for t in range(1, len(views)):
            # idx = t where strictly greater (the first maximum wins), as max(idx, mask * t):
            # t exceeds every earlier index, and masked copies (copyto where=) are ~5x slower
            v = views[t][lo:hi]
            np.greater(v, o, out=mask)
            np.multiply(mask_u8, t, out=mask_u8)
            np.maximum(i, mask_u8, out=i)
            np.maximum(o, v, out=o)

    parallel_for(shape[0], rows, 2 * x.size)  # ~4 passes over the output per tap
    ctx.argmax = idx
    return out


def _pool_scatter(ctx: Ctx, g: np.ndarray, weight: Callable[[int, int, int], Any],
                  exclusive: bool) -> np.ndarray:
    """Route g back through the offset views: weight(t, lo, hi) scales g[lo:hi] for tap t."""
    kernel, stride, padding = ctx.params["kernel"], ctx.params["stride"], ctx.params["padding"]
    n, h, w, c = ctx.shapes[0]
    ho, wo = g.shape[1], g.shape[2]
    dxp = ctx.alloc((n, h + 2 * padding[0], w + 2 * padding[1], c), g.dtype)

    views = _offsets(dxp, kernel, stride, (ho, wo))

    def rows(lo: int, hi: int) -> None:  # batch rows [lo, hi): disjoint slabs of dxp
        if not exclusive:
            dxp[lo:hi].fill(0)
        gs = g[lo:hi]
        for t, view in enumerate(views):
            if exclusive:
                np.multiply(gs, weight(t, lo, hi), out=view[lo:hi])
            else:
                view[lo:hi] += gs * weight(t, lo, hi)

    parallel_for(n, rows, 2 * dxp.size)
    return _crop(ctx, dxp, ctx.shapes[0], padding)


def _exclusive(ctx: Ctx, g: np.ndarray) -> bool:
    return _covering(ctx.shapes[0], ctx.params["kernel"], ctx.params["stride"],
                     ctx.params["padding"], g.shape[1:3])


def _max_pool_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    idx = ctx.argmax
    return _pool_scatter(ctx, g, lambda t, lo, hi: idx[lo:hi] == t, _exclusive(ctx, g))


def _avg_pool_fwd(ctx: Ctx, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int]) -> np.ndarray:
    ho, wo = _pool_check("avg_pool2d", x, kernel, stride, padding)
    xp = _pad(ctx, x, padding, 0.0)
    out = ctx.alloc((x.shape[0], ho, wo, x.shape[3]), x.dtype)

    views = _offsets(xp, kernel, stride, (ho, wo))
    np.copyto(out, views[0])
    for v in views[1:]:
        out += v
    out *= 1.0 / len(views)
    return out


def _avg_pool_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    kernel = ctx.params["kernel"]
    scale = 1.0 / (kernel[0] * kernel[1])
    return _pool_scatter(ctx, g, lambda t, lo, hi: scale, _exclusive(ctx, g))


max_pool2d_p = Primitive("max_pool2d", _max_pool_fwd)
defvjp(max_pool2d_p, _max_pool_vjp)
avg_pool2d_p = Primitive("avg_pool2d", _avg_pool_fwd)
defvjp(avg_pool2d_p, _avg_pool_vjp)


def _pool(prim: Primitive, x: Operand, kernel_size: Pair, stride: Pair | None,
          padding: Pair) -> Tensor:
    op = prim.name
    kernel = _pair(op, "kernel_size", kernel_size)
    strides = kernel if stride is None else _pair(op, "stride", stride)
    return apply(prim, tensor(x), kernel=kernel, stride=strides,
                 padding=_pair(op, "padding", padding))


def max_pool2d(x: Operand, kernel_size: Pair = 2, stride: Pair | None = None,
               padding: Pair = 0) -> Tensor:
    """Max over KH x KW windows of NHWC `x` (stride defaults to the kernel; -inf padding)."""
    return _pool(max_pool2d_p, x, kernel_size, stride, padding)


def avg_pool2d(x: Operand, kernel_size: Pair = 2, stride: Pair | None = None,
               padding: Pair = 0) -> Tensor:
    """Mean over KH x KW windows of NHWC `x` (stride defaults to the kernel; zero padding
    counts towards the mean, like PyTorch's default)."""
    return _pool(avg_pool2d_p, x, kernel_size, stride, padding)
