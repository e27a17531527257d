"""Kernel dilation, which the engine's convolutions lack: the weight with zeros between its
taps (a differentiable scatter whose adjoint is the strided read), so a dilated convolution,
dense or depthwise, runs on the engine's own kernels."""

from __future__ import annotations

import numpy as np

from ...engine import Tensor
from ...engine.autograd import Ctx, Primitive, apply, defvjp
from ...engine.ops import Operand, tensor

__all__ = ["dilate_kernel"]

Pair = tuple[int, int]


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
