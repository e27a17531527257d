"""2-D convolution and pooling, channels-last (N, H, W, C).

Convolution is strided im2col plus ONE GEMM: a zero-copy `as_strided` window view of the
(padded) input is copied once into a (N*Ho*Wo, KH*KW*C) matrix and multiplied by the weight
viewed as (KH*KW*C, C_out); the result is already NHWC, so no transposes anywhere. The column
matrix is kept for the weight gradient (no second im2col); the input gradient is one small GEMM
per kernel tap, added into the shifted input window. Weights are (KH, KW, C_in, C_out).

Pooling works on the KH*KW strided "offset" views of the input (each (N, Ho, Wo, C)), so it
needs no window copy: max pooling keeps a uint8 argmax per output (first maximum wins, as in
PyTorch) and routes gradients through it; average pooling counts padding (count_include_pad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float, check_ndim, check_same_dtype
from .ops import Operand, tensor
from .parallel import matmul as gemm
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["avg_pool2d", "conv2d", "conv_output_size", "max_pool2d"]

Pair = int | tuple[int, int]

#: below this many columns (KH*KW*C_in) the im2col GEMM is memory-bound, so an extra column
#: of ones that makes it add the bias costs nothing, and saves a pass over the output
FOLD_BIAS_BELOW = 64

#: a weight gradient of at most DW_CHUNK_MAX_OUT elements whose column matrix has at least
#: 2 * DW_CHUNK_ROWS rows is summed from up to DW_CHUNKS row blocks (see _dw_chunks)
DW_CHUNK_ROWS = 8192
DW_CHUNKS = 8
DW_CHUNK_MAX_OUT = 1 << 14


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


def _im2col(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
            out_hw: tuple[int, int], cols: np.ndarray) -> None:
    """Copy every window of `xp` into the (N*Ho*Wo, KH*KW*C) matrix `cols`, row-major.

    One 6-D strided copy, whose contiguous inner runs are KW*C long; with few channels those
    runs are tiny, and KH*KW per-tap copies (runs of Wo*C in the source) are ~3x faster.
    """
    n, c = xp.shape[0], xp.shape[3]
    (kh, kw), (ho, wo), (row, item) = kernel, out_hw, cols.strides  # rows may have a spare column
    cols6 = as_strided(cols, (n, ho, wo, kh, kw, c),
                       (ho * wo * row, wo * row, row, kw * c * item, c * item, item))

    if c >= 4:
        np.copyto(cols6, _windows(xp, kernel, stride, out_hw))
        return
    for t, view in enumerate(_offsets(xp, kernel, stride, out_hw)):
        np.copyto(cols6[:, :, :, t // kw, t % kw], view)


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


# -- convolution ---------------------------------------------------------------------------
def _conv2d_fwd(ctx: Ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray,
                stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    check_ndim("conv2d", "input", x, 4, "(N, H, W, C)")
    check_ndim("conv2d", "weight", w, 4, "(KH, KW, C_in, C_out)")
    check_same_dtype("conv2d", input=x, weight=w, bias=b)
    kh, kw, cin, cout = w.shape
    n, _, _, c = x.shape
    if c != cin:
        raise ValueError(f"conv2d: input {x.shape} has {c} channels but weight {w.shape} "
                         f"expects {cin}")
    if b.shape != (cout,):
        raise ValueError(f"conv2d: bias {b.shape} does not match weight {w.shape} "
                         f"({cout} output channels)")
    ho, wo = _geometry("conv2d", x, (kh, kw), stride, padding)
    xp = _pad(ctx, x, padding, 0.0)
    k = kh * kw * c
    fold = k < FOLD_BIAS_BELOW
    cols = ctx.alloc((n * ho * wo, k + fold), x.dtype)
    out = ctx.alloc((n, ho, wo, cout), x.dtype)
    out2 = out.reshape(-1, cout)
    if fold:  # a column of ones times a bias row: the GEMM adds the bias (and sums its grad)
        wb = np.empty((k + 1, cout), x.dtype)
        wb[:k] = w.reshape(k, cout)
        wb[k] = b
    else:
        wb = w.reshape(k, cout)
    rows = ho * wo

    def images(lo: int, hi: int) -> None:  # im2col and GEMM of images [lo, hi)
        c2, o2 = cols[lo * rows:hi * rows], out2[lo * rows:hi * rows]
        _im2col(xp[lo:hi], (kh, kw), stride, (ho, wo), c2)
        if fold:
            c2[:, k] = 1.0
        np.matmul(c2, wb, out=o2)
        if not fold:
            o2 += b

    parallel_for(n, images, cols.size + out.size)
    ctx.cols = cols  # the weight gradient's operand: no second im2col in backward
    ctx.dwb = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    return out


def _span(k: int, pad: int, stride: int, n_in: int, n_out: int) -> tuple[int, int, int]:
    """Outputs [lo, hi) whose kernel tap `k` lands inside the input, and that first input row."""
    lo = max(0, -((k - pad) // stride))  # ceil((pad - k) / stride)
    hi = min(n_out, (n_in - 1 + pad - k) // stride + 1)
    return lo, hi, lo * stride + k - pad


def _conv2d_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    # One (M, C_out) x (C_out, C_in) GEMM per kernel tap into a reused buffer, added into the
    # shifted input window: every add runs over contiguous (W, C) rows, unlike a col2im of one
    # big column-gradient matrix (strided 6-D adds, twice as slow here).
    (n, h, w_, cin), (kh, kw, _, cout) = ctx.shapes[0], ctx.shapes[1]
    (sh, sw), (ph, pw) = ctx.params["stride"], ctx.params["padding"]
    ho, wo = g.shape[1], g.shape[2]
    w = ctx.args[1]
    g2 = np.ascontiguousarray(g).reshape(-1, cout)
    dx = ctx.alloc((n, h, w_, cin), g.dtype)
    rows = ho * wo

    def images(lo: int, hi: int) -> None:  # the input gradient of images [lo, hi)
        d = dx[lo:hi]
        d.fill(0)
        gs = g2[lo * rows:hi * rows]
        tap = ctx.alloc((len(gs), cin), g.dtype)  # counted by the pool, as every buffer
        tap4 = tap.reshape(hi - lo, ho, wo, cin)
        for i in range(kh):
            ylo, yhi, y0 = _span(i, ph, sh, h, ho)
            for j in range(kw):
                xlo, xhi, x0 = _span(j, pw, sw, w_, wo)
                if yhi <= ylo or xhi <= xlo:
                    continue
                np.matmul(gs, w[i, j].T, out=tap)
                d[:, y0:y0 + sh * (yhi - ylo - 1) + 1:sh, x0:x0 + sw * (xhi - xlo - 1) + 1:sw] \
                    += tap4[:, ylo:yhi, xlo:xhi]

    parallel_for(n, images, dx.size * kh * kw)
    return dx


def _conv2d_dwb(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    """cols.T @ g, once per backward: the weight gradient, plus the bias's as a last row
    when the bias was folded into the GEMM."""
    dwb = getattr(ctx, "dwb", None)
    if dwb is None:
        cols, g2 = ctx.cols, np.ascontiguousarray(g).reshape(-1, g.shape[3])
        chunks = _dw_chunks(cols.shape, g2.shape[1])
        dwb = ctx.dwb = gemm(cols.T, g2) if chunks < 2 else _chunked_tn(cols, g2, chunks)
    return dwb


def _dw_chunks(cols_shape: tuple[int, ...], cout: int) -> int:
    """How many row blocks the weight gradient's shared dimension is cut into: 1 (one GEMM,
    split over its rows by `gemm` when large) unless the result is small beside a long
    column matrix (a first layer of few input channels), whose GEMM is too thin to split
    over rows. A function of the shapes alone, never of the thread count, so the partial
    sums and their order, hence the bits, are the same on any number of threads."""
    rows, k = cols_shape
    if k * cout > DW_CHUNK_MAX_OUT:
        return 1
    return min(DW_CHUNKS, rows // DW_CHUNK_ROWS)


def _chunked_tn(cols: np.ndarray, g2: np.ndarray, chunks: int) -> np.ndarray:
    """cols.T @ g2 as `chunks` partial products over equal row blocks (side by side on the
    intra-op threads), plus the few rows left over, added in block order.

    Each thread's blocks are ONE stacked matmul call: a slab of several calls would take the
    GIL between them, and a thread that wakes to find it taken sleeps again, so on a machine
    with slow wake-ups the other thread's slab would only start once this one's ended.
    """
    rows, k = cols.shape
    c = rows // chunks
    cols3 = cols[:c * chunks].reshape(chunks, c, k).transpose(0, 2, 1)
    g3 = g2[:c * chunks].reshape(chunks, c, g2.shape[1])
    parts = np.empty((chunks, k, g2.shape[1]), np.result_type(cols, g2))

    def blocks(lo: int, hi: int) -> None:
        np.matmul(cols3[lo:hi], g3[lo:hi], out=parts[lo:hi])

    parallel_for(chunks, blocks, cols.size + g2.size)
    out = parts[0]
    for i in range(1, chunks):
        out += parts[i]
    if c * chunks < rows:
        out += cols[c * chunks:].T @ g2[c * chunks:]
    return out


def _conv2d_vjp_w(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    kh, kw, cin, cout = ctx.shapes[1]
    return _conv2d_dwb(ctx, g)[:kh * kw * cin].reshape(ctx.shapes[1])


def _conv2d_vjp_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    if ctx.cols.shape[1] > np.prod(ctx.shapes[1][:3]):  # folded: the GEMM's last row
        return _conv2d_dwb(ctx, g)[-1].copy()
    g2 = np.ascontiguousarray(g).reshape(-1, g.shape[3])
    return np.ones(g2.shape[0], g.dtype) @ g2  # a GEMV: ~3x faster than add.reduce(axis=0)


def _conv2d_vjp_work(ctx: Ctx, g: np.ndarray) -> int:
    """Multiply-adds of each of the input and weight gradients (both g.size * KH*KW*C_in);
    0 when the bias is folded into the weight gradient's GEMM: the two share its result
    (ctx.dwb), so they must not run side by side."""
    k = ctx.cols.shape[1]
    return 0 if k > np.prod(ctx.shapes[1][:3]) else g.size * k


conv2d_p = Primitive("conv2d", _conv2d_fwd, saves=(1,), vjp_work=_conv2d_vjp_work)
defvjp(conv2d_p, _conv2d_vjp_x, _conv2d_vjp_w, _conv2d_vjp_b)


def conv2d(x: Operand, weight: Operand, bias: Operand | None = None, stride: Pair = 1,
           padding: Pair = 0) -> Tensor:
    """2-D cross-correlation of NHWC `x` with a (KH, KW, C_in, C_out) weight, plus bias."""
    w = tensor(weight)
    b = tensor(np.zeros(w.shape[3], w.dtype)) if bias is None else tensor(bias)
    return apply(conv2d_p, tensor(x), w, b, stride=_pair("conv2d", "stride", stride),
                 padding=_pair("conv2d", "padding", padding))


# -- pooling -------------------------------------------------------------------------------
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
