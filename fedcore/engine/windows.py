"""Window geometry shared by convolution and pooling, channels-last (N, H, W, C).

Argument normalisation (`_pair`), output sizes, padding, and zero-copy strided views of the
windows of a padded input: whole windows (`_windows`, for im2col) or one view per kernel tap
(`_offsets`, for pooling and per-tap copies).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .autograd import Ctx

__all__ = ["Pair", "conv_output_size"]

Pair = int | tuple[int, int]


def _pair(op: str, name: str, v: Pair) -> tuple[int, int]:
    pair = (v, v) if isinstance(v, int | np.integer) else tuple(v)
    if len(pair) != 2 or any(int(p) != p for p in pair):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a window sweep: floor((size + 2*padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _geometry(op: str, x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int]) -> tuple[int, int]:
    """(Ho, Wo) for `x`, or a ValueError naming the op, the input shape and the window."""
    if min(stride) < 1 or min(kernel) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: kernel {kernel} and stride {stride} must be >= 1 and padding "
                         f"{padding} >= 0")
    ho = conv_output_size(x.shape[1], kernel[0], stride[0], padding[0])
    wo = conv_output_size(x.shape[2], kernel[1], stride[1], padding[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: input {x.shape} is smaller than the {kernel} window "
                         f"(padding {padding})")
    return ho, wo


def _pad(ctx: Ctx, x: np.ndarray, padding: tuple[int, int], value: float) -> np.ndarray:
    """`x` with a border of `value` (writes only the border and the interior once)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, h, w, c = x.shape
    xp = ctx.alloc((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    xp[:, :ph] = value
    xp[:, ph + h:] = value
    xp[:, ph:ph + h, :pw] = value
    xp[:, ph:ph + h, pw + w:] = value
    xp[:, ph:ph + h, pw:pw + w] = x
    return xp


def _windows(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             out_hw: tuple[int, int]) -> np.ndarray:
    """Read-only (N, Ho, Wo, KH, KW, C) view of every window of `xp` (no copy)."""
    sn, sh, sw, sc = xp.strides
    shape = (xp.shape[0], *out_hw, *kernel, xp.shape[3])
    strides = (sn, sh * stride[0], sw * stride[1], sh, sw, sc)
    return as_strided(xp, shape, strides, writeable=False)

def _offsets(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             out_hw: tuple[int, int]) -> list[np.ndarray]:
    """The KH*KW views xp[:, i::sh, j::sw] cut to (N, Ho, Wo, C), row-major over (i, j)."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]


def _crop(ctx: Ctx, dxp: np.ndarray, shape: tuple[int, ...],
          padding: tuple[int, int]) -> np.ndarray:
    """The interior of a padded gradient as a contiguous array of `shape`."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return dxp
    out = ctx.alloc(shape, dxp.dtype)
    np.copyto(out, dxp[:, ph:ph + shape[1], pw:pw + shape[2]])
    return out


