"""Convolution pieces the engine's conv2d lacks: depthwise convolution and kernel dilation.

Depthwise (groups == channels, one filter per channel) runs tap by tap on NHWC: each of the
KH*KW taps is a strided view of the padded input times a (C,) weight row, accumulated in
place, so it needs no im2col and no GEMM (a GEMM per channel would be C tiny products).
Dilated kernels for the dense conv are the weight with zeros between taps (a differentiable
scatter whose adjoint is the strided read), so dilation reuses the engine's im2col path.
"""

from __future__ import annotations

import numpy as np

from ...engine import Tensor
from ...engine.autograd import Ctx, Primitive, apply, defvjp
from ...engine.checks import check_ndim, check_same_dtype
from ...engine.ops import Operand, tensor

__all__ = ["depthwise_conv2d", "dilate_kernel"]

Pair = tuple[int, int]


def _geometry(x_shape: tuple[int, ...], k: Pair, stride: Pair, pads: tuple[int, int, int, int],
              dil: Pair) -> Pair:
    n, h, w, c = x_shape
    ho = (h + pads[0] + pads[2] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    wo = (w + pads[1] + pads[3] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"depthwise_conv2d: input {x_shape} is smaller than the {k} kernel")
    return ho, wo


def _taps(xp: np.ndarray, k: Pair, stride: Pair, dil: Pair, out_hw: Pair):  # noqa: ANN202
    (sh, sw), (ho, wo) = stride, out_hw
    for i in range(k[0]):
        for j in range(k[1]):
            y0, x0 = i * dil[0], j * dil[1]
            yield i, j, xp[:, y0:y0 + sh * (ho - 1) + 1:sh, x0:x0 + sw * (wo - 1) + 1:sw]


def _padded(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    t, left, b, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))


def _dw_fwd(ctx: Ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: Pair,
            pads: tuple[int, int, int, int], dil: Pair) -> np.ndarray:
    check_ndim("depthwise_conv2d", "input", x, 4, "(N, H, W, C)")
    check_same_dtype("depthwise_conv2d", input=x, weight=w, bias=b)
    kh, kw, c = w.shape
    if x.shape[3] != c or b.shape != (c,):
        raise ValueError(f"depthwise_conv2d: input {x.shape}, weight {w.shape} and bias "
                         f"{b.shape} disagree on the channel count")
    ho, wo = _geometry(x.shape, (kh, kw), stride, pads, dil)
    xp = _padded(x, pads)
    out = ctx.alloc((x.shape[0], ho, wo, c), x.dtype)
    out[...] = b
    tmp = np.empty_like(out)
    for i, j, view in _taps(xp, (kh, kw), stride, dil, (ho, wo)):
        np.multiply(view, w[i, j], out=tmp)
        out += tmp
    ctx.xp = xp
    return out


def _dw_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    w = ctx.args[1]
    kh, kw, _ = w.shape
    stride, pads, dil = ctx.params["stride"], ctx.params["pads"], ctx.params["dil"]
    n, h, wd, c = ctx.shapes[0]
    dxp = np.zeros((n, h + pads[0] + pads[2], wd + pads[1] + pads[3], c), g.dtype)
    for i, j, view in _taps(dxp, (kh, kw), stride, dil, g.shape[1:3]):
        view += g * w[i, j]
    return np.ascontiguousarray(dxp[:, pads[0]:pads[0] + h, pads[1]:pads[1] + wd])


def _dw_vjp_w(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    kh, kw, c = ctx.shapes[1]
    dw = np.empty((kh, kw, c), g.dtype)
    g2 = g.reshape(-1, c)
    for i, j, view in _taps(ctx.xp, (kh, kw), ctx.params["stride"], ctx.params["dil"],
                            g.shape[1:3]):
        np.einsum("mc,mc->c", np.ascontiguousarray(view).reshape(-1, c), g2, out=dw[i, j])
    return dw


depthwise_p = Primitive("onnx_depthwise_conv2d", _dw_fwd, saves=(1,))
defvjp(depthwise_p, _dw_vjp_x, _dw_vjp_w, lambda ctx, g: g.reshape(-1, g.shape[3]).sum(axis=0))


def depthwise_conv2d(x: Operand, weight: Operand, bias: Operand, stride: Pair,
                     pads: tuple[int, int, int, int], dilation: Pair) -> Tensor:
    """Per-channel convolution of NHWC `x` with a (KH, KW, C) weight; pads (top, left, bottom,
    right)."""
    return apply(depthwise_p, tensor(x), tensor(weight), tensor(bias), stride=tuple(stride),
                 pads=tuple(pads), dil=tuple(dilation))


def _dilate_fwd(ctx: Ctx, w: np.ndarray, dil: Pair) -> np.ndarray:
    kh, kw = w.shape[:2]
    out = ctx.alloc(((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1, *w.shape[2:]), w.dtype)
    out.fill(0)
    out[::dil[0], ::dil[1]] = w
    return out


dilate_p = Primitive("onnx_dilate_kernel", _dilate_fwd)
defvjp(dilate_p, lambda ctx, g: g[::ctx.params["dil"][0], ::ctx.params["dil"][1]])


def dilate_kernel(weight: Operand, dilation: Pair) -> Tensor:
    """A (KH, KW, ...) kernel spread out with dilation - 1 zeros between taps."""
    return apply(dilate_p, tensor(weight), dil=tuple(dilation))
