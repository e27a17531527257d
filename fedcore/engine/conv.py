"""2-D convolution, channels-last (N, H, W, C); pooling is in pooling.py, window geometry in
windows.py.

Convolution is strided im2col plus a GEMM: a zero-copy `as_strided` window view of the
(padded) input is copied into a (rows, KH*KW*C) matrix and multiplied by the weight viewed as
(KH*KW*C, C_out); the result is already NHWC, so no transposes anywhere. Both run over blocks
of images whose column matrix is about BLOCK_BYTES, still in cache when the GEMM reads it. The
weight gradient redoes the im2col block by block (cheaper than keeping a column matrix KH*KW
times the input's size from forward to backward, and that memory is saved), except for a thin
layer (few input channels), whose whole column matrix is kept for its row-block GEMMs. The
input gradient is one GEMM per kernel tap, added into the shifted input window. Weights are
(KH, KW, C_in, C_out).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_ndim, check_same_dtype
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor
from .windows import Pair, _geometry, _offsets, _pad, _pair, _windows, conv_output_size

__all__ = ["conv2d", "conv_output_size"]

#: below this many columns (KH*KW*C_in) the im2col GEMM is memory-bound, so an extra column
#: of ones that makes it add the bias costs nothing, and saves a pass over the output
FOLD_BIAS_BELOW = 64

#: im2col and its GEMM run over blocks of images whose column matrix is about this size (the
#: CNN's second conv at batch 64, one core, forward and backward: 19.7 ms; 2 MiB blocks 20.0,
#: 512 KiB 20.4, 4 MiB 25.9)
BLOCK_BYTES = 1 << 20

#: a weight gradient of at most DW_CHUNK_MAX_OUT elements whose column matrix has at least
#: 2 * DW_CHUNK_ROWS rows is summed from up to DW_CHUNKS row blocks (see _dw_chunks); blocks
#: that fit in L2 with their slice of the output gradient run ~2x faster even on one thread
#: than one thin GEMM (the CNN's first conv, 50176 x 10 columns: 0.92 -> 0.52 ms)
DW_CHUNK_ROWS = 2048
DW_CHUNKS = 64
DW_CHUNK_MAX_OUT = 1 << 14


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
    rows = ho * wo
    # a thin weight gradient keeps the whole column matrix for its row-block GEMMs; any
    # other convolution im2cols one cache-sized block at a time, here and again in backward
    thin = _dw_chunks((n * rows, k + fold), cout) > 1
    cols = ctx.alloc((n * rows, k + fold), x.dtype) if thin else None
    out = ctx.alloc((n, ho, wo, cout), x.dtype)
    out2 = out.reshape(-1, cout)
    if fold:  # a column of ones times a bias row: the GEMM adds the bias (and sums its grad)
        wb = np.empty((k + 1, cout), x.dtype)
        wb[:k] = w.reshape(k, cout)
        wb[k] = b
    else:
        wb = w.reshape(k, cout)

    step = _block_images(rows, k + fold, x.itemsize)

    def blocked(lo: int, hi: int) -> None:  # im2col and GEMM of images [lo, hi), by blocks
        scratch = None if thin else ctx.alloc((min(step, hi - lo) * rows, k + fold), x.dtype)
        for a in range(lo, hi, step):
            z = min(hi, a + step)
            o2 = out2[a * rows:z * rows]
            c2 = cols[a * rows:z * rows] if thin else scratch[:len(o2)]
            _fill_cols(xp[a:z], (kh, kw), stride, (ho, wo), c2, fold)
            np.matmul(c2, wb, out=o2)
            if not fold:
                o2 += b

    parallel_for(n, blocked, n * rows * (k + fold) + out.size)
    ctx.cols = cols  # a thin weight gradient's operand, else None
    ctx.xp = None if thin or xp is x else xp  # backward's im2col source, else the input
    ctx.fold = fold
    ctx.dwb = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    return out


def _fill_cols(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               out_hw: tuple[int, int], cols: np.ndarray, fold: bool) -> None:
    """im2col of `xp` into `cols`, and its last column of ones when the bias is folded."""
    _im2col(xp, kernel, stride, out_hw, cols)
    if fold:
        cols[:, -1] = 1.0


def _block_images(rows: int, width: int, itemsize: int) -> int:
    """Images per im2col block: a (rows * images, width) column matrix of about BLOCK_BYTES,
    still in cache when its GEMM reads it. A function of the shapes alone."""
    return max(1, BLOCK_BYTES // (rows * width * itemsize))


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

    taps = []  # (i, j, output rows, output cols, input window); a whole-input tap first
    for i in range(kh):
        ylo, yhi, y0 = _span(i, ph, sh, h, ho)
        for j in range(kw):
            xlo, xhi, x0 = _span(j, pw, sw, w_, wo)
            if yhi > ylo and xhi > xlo:
                whole = (sh, sw) == (1, 1) and (ho, wo) == (h, w_) and y0 == x0 == 0 \
                    and (ylo, xlo) == (0, 0)
                window = (slice(y0, y0 + sh * (yhi - ylo - 1) + 1, sh),
                          slice(x0, x0 + sw * (xhi - xlo - 1) + 1, sw))
                taps.insert(0 if whole else len(taps),
                            (i, j, slice(ylo, yhi), slice(xlo, xhi), window, whole))
    first_whole = bool(taps) and taps[0][5]

    def images(lo: int, hi: int) -> None:  # the input gradient of images [lo, hi)
        d = dx[lo:hi]
        gs = g2[lo * rows:hi * rows]
        if first_whole:  # a tap that covers every input: its product IS the first sum
            i, j = taps[0][:2]
            np.matmul(gs, w[i, j].T, out=d.reshape(-1, cin))
        else:
            d.fill(0)
        tap = ctx.alloc((len(gs), cin), g.dtype)  # counted by the pool, as every buffer
        tap4 = tap.reshape(hi - lo, ho, wo, cin)
        for i, j, ys, xs, (wy, wx), _ in taps[first_whole:]:
            np.matmul(gs, w[i, j].T, out=tap)
            d[:, wy, wx] += tap4[:, ys, xs]

    parallel_for(n, images, dx.size * kh * kw)
    return dx


def _conv2d_dwb(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    """cols.T @ g, once per backward: the weight gradient, plus the bias's as a last row
    when the bias was folded into the GEMM."""
    dwb = getattr(ctx, "dwb", None)
    if dwb is None:
        cols, g2 = ctx.cols, np.ascontiguousarray(g).reshape(-1, g.shape[3])
        if cols is None:
            dwb = _blockwise_tn(ctx, g2, g.shape[1:3])
        else:
            dwb = _chunked_tn(cols, g2, _dw_chunks(cols.shape, g2.shape[1]))
        ctx.dwb = dwb
    return dwb


def _blockwise_tn(ctx: Ctx, g2: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """cols.T @ g2 without the whole column matrix: each block of images is im2col'd again
    into a cache-sized buffer and multiplied at once (its partial product kept apart), then
    the partial products are added in block order. Redoing im2col while it is in cache costs
    less than writing a column matrix KH*KW times the input's size in forward and reading it
    back here from memory, and the step holds a block instead of the whole matrix. The blocks
    are a function of the shapes alone, so the bits are the same on any number of threads."""
    kh, kw, _, cout = ctx.shapes[1]
    xp = ctx.xp if ctx.xp is not None else ctx.args[0]
    n, rows, width = xp.shape[0], out_hw[0] * out_hw[1], kh * kw * xp.shape[3] + ctx.fold
    step = _block_images(rows, width, g2.itemsize)
    parts = ctx.alloc((-(-n // step), width, cout), g2.dtype)

    def blocks(lo: int, hi: int) -> None:
        scratch = ctx.alloc((min(step, n) * rows, width), g2.dtype)
        for i in range(lo, hi):
            a, z = i * step, min(n, i * step + step)
            cols = scratch[:(z - a) * rows]
            _fill_cols(xp[a:z], (kh, kw), ctx.params["stride"], out_hw, cols, ctx.fold)
            np.matmul(cols.T, g2[a * rows:z * rows], out=parts[i])

    parallel_for(len(parts), blocks, n * rows * width + g2.size)
    out = parts[0]
    for part in parts[1:]:
        out += part
    return out


def _dw_chunks(cols_shape: tuple[int, ...], cout: int) -> int:
    """How many row blocks a kept column matrix is cut into for the weight gradient: > 1
    when the result is small beside a long column matrix (a first layer of few input
    channels), whose GEMM is too thin to split over rows and streams its operands from
    memory; such a layer keeps its column matrix (else im2col is redone by blocks). A
    function of the shapes alone, never of the thread count, so the partial sums and their
    order, hence the bits, are the same on any number of threads."""
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
    if ctx.fold:  # folded: the GEMM's last row
        return _conv2d_dwb(ctx, g)[-1].copy()
    g2 = np.ascontiguousarray(g).reshape(-1, g.shape[3])
    return np.ones(g2.shape[0], g.dtype) @ g2  # a GEMV: ~3x faster than add.reduce(axis=0)


def _conv2d_vjp_work(ctx: Ctx, g: np.ndarray) -> int:
    """Multiply-adds of each of the input and weight gradients (both g.size * KH*KW*C_in);
    0 when the bias is folded into the weight gradient's GEMM: the two share its result
    (ctx.dwb), so they must not run side by side."""
    return 0 if ctx.fold else g.size * int(np.prod(ctx.shapes[1][:3]))


# the input's VJP reads the weight; the weight's (and a folded bias's) redo im2col from the
# input, unless the forward kept its padded copy or a thin layer's column matrix
conv2d_p = Primitive("conv2d", _conv2d_fwd, saves=(0, 1), reads=((1,), (0,), (0,)),
                     vjp_work=_conv2d_vjp_work)
defvjp(conv2d_p, _conv2d_vjp_x, _conv2d_vjp_w, _conv2d_vjp_b)


def conv2d(x: Operand, weight: Operand, bias: Operand | None = None, stride: Pair = 1,
           padding: Pair = 0) -> Tensor:
    """2-D cross-correlation of NHWC `x` with a (KH, KW, C_in, C_out) weight, plus bias."""
    w = tensor(weight)
    b = tensor(np.zeros(w.shape[3], w.dtype)) if bias is None else tensor(bias)
    return apply(conv2d_p, tensor(x), w, b, stride=_pair("conv2d", "stride", stride),
                 padding=_pair("conv2d", "padding", padding))
