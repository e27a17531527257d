"""MobileNet-style ops, channels-last: depthwise convolution and global average pooling.

A depthwise convolution filters each channel on its own (groups = channels): weight
(KH, KW, C). Forward, weight gradient and input gradient are all stride-1 correlations over
"canvases": zero-bordered copies of the input (or of the output gradient) laid out
(N, rows, width, C) in one flat buffer. An output row computed at the canvas's width (its last
columns are garbage, dropped afterwards) makes the output of a whole image ONE contiguous run,
and so is the canvas stretch each tap reads for it: a correlation is one `einsum` over
(N, KH, KW, rows*width*C) views with a few hundred inner loops thousands of elements long,
where windows of single output rows give thousands of loops of Wo*C (the MobileNet's 14x14x16
layer, batch 32: 148 against ~240 us, busy machine). A stride s splits the canvas by row and column
position mod s ("phases", together one copy of the input), each again a stride-1 correlation
with the taps that land on it. The input gradient is the transposed convolution: per (row,
column) phase of the input, a stride-1 correlation of the zero-bordered output gradient with
the flipped taps of that phase; the weight gradient then reads that zero-bordered g as its
own operand where the widths agree (g is laid out once a backward). Each op is one
`parallel_for` over images (whole images to a thread: one hand-off an op; the weight
gradient sums one partial per thread). A pointwise
(1x1) convolution is a dense layer on the (N*H*W, C) rows and needs no op of its own
(`fedcore.nn.PointwiseConv2d`).
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp, defvjp_into
from .channels import channel_sum, einsum, tiled
from .checks import check_ndim, check_same_dtype
from .conv import Pair, _geometry, _pair
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["depthwise_conv2d", "global_avg_pool2d"]


def _span(phase: int, stride: int, pad: int, size: int) -> tuple[int, int]:
    """[lo, hi): the phase-grid positions r whose padded position phase + stride*r is a real
    input row (or column), 0 <= phase + stride*r - pad < size."""
    return max(0, -(-(pad - phase) // stride)), -(-(size + pad - phase) // stride)


def _view(flat: np.ndarray, start: int, shape: tuple[int, ...],
          strides: tuple[int, ...]) -> np.ndarray:
    """A strided view of the contiguous 1-D `flat` from element `start` (numpy checks that
    it stays inside; as_strided would not, and costs 20x more per call: ~6 against 0.3 us)."""
    return np.ndarray(shape, flat.dtype, flat, start * flat.itemsize, strides)


def _canvas(ctx: Ctx, size: int, dtype: np.dtype, keep: bool) -> np.ndarray:
    """A zeroed flat buffer of `size` elements. `keep`: an engine buffer that backward reads
    (else a scratch one)."""
    flat = (ctx.alloc if keep else ctx.pool.alloc)((size,), dtype)
    flat.fill(0)
    return flat


def _tiled_taps(ctx: Ctx, w: np.ndarray, length: int) -> np.ndarray:
    """(KH, KW, length): each tap's (C,) weights repeated along a run (length % C == 0);
    built once an op, every phase takes a strided view of its taps. Like every scratch
    buffer here it comes from the pool, which recycles large buffers: fresh numpy arrays
    this size are fresh pages from the kernel every step (page faults: ~8 % of the
    MobileNet's eager step before)."""
    kh, kw, c = w.shape
    t = ctx.pool.alloc((kh, kw, length), w.dtype)  # returned whole: counted while it lives
    t.reshape(kh, kw, length // c, c)[...] = w[:, :, None, :]
    return t


class _Runs:
    """A stride-1 correlation over a flat canvas (`img` elements an image, `pitch` a row):
    `runs(lo, hi, out)` sets out[n - lo, t] = sum_ij src[n*img + start + i*pitch + j*C + t]
    * taps[i, j, t] for images lo..hi (taps: (KR, KQ, L) tiled weights), each image's output
    ONE run of L elements."""

    def __init__(self, src: np.ndarray, n: int, img: int, pitch: int, taps: np.ndarray,
                 start: int, c: int):
        kr, kq, length = taps.shape
        end = (n - 1) * img + start + (kr - 1) * pitch + (kq - 1) * c + length
        if start < 0 or end > src.size:  # a geometry bug, never the caller's input
            raise RuntimeError(f"depthwise_conv2d: run of {length} at {start} outside a "
                               f"canvas of {src.size}")
        self.src, self.img, self.start, self.taps = src, img, start, taps
        s = src.itemsize
        self.strides = (img * s, pitch * s, c * s, s)

    def window(self, lo: int, hi: int) -> np.ndarray:
        """The (hi - lo, KR, KQ, L) view the runs of images lo..hi read."""
        return _view(self.src, lo * self.img + self.start, (hi - lo, *self.taps.shape),
                     self.strides)

    def __call__(self, lo: int, hi: int, out: np.ndarray) -> None:
        einsum("nijl,ijl->nl", self.window(lo, hi), self.taps, out=out)


def _grid(w: np.ndarray, stride: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, width) of the forward's phase canvases: output size plus the most taps a phase
    has, minus one."""
    (kh, kw), (sh, sw), (ho, wo) = w.shape[:2], stride, out_hw
    return ho + -(-kh // sh) - 1, wo + -(-kw // sw) - 1


def _dw_fwd(ctx: Ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: tuple[int, int],
            padding: tuple[int, int]) -> np.ndarray:
    check_ndim("depthwise_conv2d", "input", x, 4, "(N, H, W, C)")
    check_ndim("depthwise_conv2d", "weight", w, 3, "(KH, KW, C)")
    check_same_dtype("depthwise_conv2d", input=x, weight=w, bias=b)
    kh, kw, c = w.shape
    if x.shape[3] != c or b.shape != (c,):
        raise ValueError(f"depthwise_conv2d: input {x.shape}, weight {w.shape} and bias "
                         f"{b.shape} must have the same number of channels")
    n, h, wd, _ = x.shape
    ho, wo = _geometry("depthwise_conv2d", x, (kh, kw), stride, padding)
    (sh, sw), (ph, pw) = stride, padding
    hq, wq = _grid(w, stride, (ho, wo))
    pitch, img, length = wq * c, hq * wq * c, ho * wq * c
    phases = [(a, bb) for a in range(min(sh, kh)) for bb in range(min(sw, kw))]
    # every phase's canvas in one buffer, phase p's images from element p*n*img; the slack
    # is what the last image's runs read past its end (garbage columns only)
    flat = _canvas(ctx, len(phases) * n * img + (-(-kw // sw) - 1) * c, x.dtype, keep=True)
    taps = _tiled_taps(ctx, w, length)
    work = []
    for p, (a, bb) in enumerate(phases):
        grid = flat[p * n * img:(p + 1) * n * img].reshape(n, hq, wq, c)
        r0, r1 = _span(a, sh, ph, h)
        q0, q1 = _span(bb, sw, pw, wd)
        r1, q1 = min(r1, hq), min(q1, wq)
        gather = None
        if r1 > r0 and q1 > q0:  # grid[r, q] = x[a + sh*r - ph, bb + sw*q - pw]
            y0, x0 = a + sh * r0 - ph, bb + sw * q0 - pw
            gather = (grid[:, r0:r1, q0:q1],
                      x[:, y0:y0 + sh * (r1 - r0 - 1) + 1:sh, x0:x0 + sw * (q1 - q0 - 1) + 1:sw])
        work.append((_Runs(flat, n, img, pitch, taps[a::sh, bb::sw], p * n * img, c), gather))
    ctx.canvas = (flat, phases)  # dW's operands
    # the input gradient's too, reversed (w is saved: it cannot change); not under a memory
    # budget, where they would live on until backward (there memory comes first, as in the pool)
    ctx.taps = taps if ctx.pool.budget_bytes is None else None
    ctx.gcanvas = None  # the input gradient's zero-bordered g, lent to dW (a replay reuses ctx)
    acc = ctx.pool.alloc((n, length), x.dtype)
    tmp = ctx.pool.alloc(acc.shape, x.dtype) if len(phases) > 1 else None
    out = ctx.alloc((n, ho, wo, c), x.dtype)
    bias = tiled(b, wo)

    def images(lo: int, hi: int) -> None:
        for p, (runs, gather) in enumerate(work):
            if gather is not None:
                gather[0][lo:hi] = gather[1][lo:hi]
            runs(lo, hi, acc[lo:hi] if p == 0 else tmp[lo:hi])
            if p:
                acc[lo:hi] += tmp[lo:hi]
        # the garbage columns dropped, the bias added
        np.add(acc[lo:hi].reshape(-1, pitch)[:, :wo * c], bias, out=out[lo:hi].reshape(-1, wo * c))

    parallel_for(n, images, n * length * (kh * kw + 2 * len(phases)))
    return out


def _dw_vjp_x(ctx: Ctx, g: np.ndarray, dx: np.ndarray | None = None) -> np.ndarray:
    # padded input row Y = a + sh*R (phase a) gets tap a + sh*i' from output row R - i': per
    # phase, a stride-1 correlation of g, zero-bordered, with the phase's taps flipped
    w = ctx.args[1]
    kh, kw, c = w.shape
    n, h, wd, _ = ctx.shapes[0]
    (sh, sw), (ph, pw) = ctx.params["stride"], ctx.params["padding"]
    ho, wo = g.shape[1], g.shape[2]
    rows = [(a, len(range(a, kh, sh)), *_span(a, sh, ph, h)) for a in range(min(sh, kh))]
    cols = [(b, len(range(b, kw, sw)), *_span(b, sw, pw, wd)) for b in range(min(sw, kw))]
    rows = [r for r in rows if r[3] > r[2]]
    cols = [q for q in cols if q[3] > q[2]]
    dx = ctx.alloc((n, h, wd, c), g.dtype) if dx is None else dx
    if sh > kh or sw > kw or len(rows) < min(sh, kh) or len(cols) < min(sw, kw):
        dx.fill(0)  # rows or columns no window reaches get no gradient
    if not rows or not cols:
        return dx
    # g sits at (top, left) of the canvas: every phase's first run starts inside it
    top = max(0, *(k - 1 - lo for _, k, lo, _ in rows))
    left = max(0, *(k - 1 - lo for _, k, lo, _ in cols))
    hg = top + max(ho, *(hi for *_, hi in rows))
    wg = left + max(wo, *(hi for *_, hi in cols))
    pitch, img = wg * c, hg * wg * c
    plans, end = [], 0
    for a, kr, r0, r1 in rows:
        for b, kq, q0, q1 in cols:
            start = ((top - kr + 1 + r0) * wg + left - kq + 1 + q0) * c
            length = (r1 - r0) * pitch
            end = max(end, (n - 1) * img + start + (kr - 1) * pitch + (kq - 1) * c + length)
            y0, x0 = a + sh * r0 - ph, b + sw * q0 - pw
            dst = dx[:, y0:y0 + sh * (r1 - r0 - 1) + 1:sh, x0:x0 + sw * (q1 - q0 - 1) + 1:sw]
            plans.append((a, b, start, length, dst, r1 - r0, q1 - q0))
    gflat = _canvas(ctx, max(end, n * img), g.dtype, keep=False)
    gpad = gflat[:n * img].reshape(n, hg, wg, c)
    # flipped taps: the transpose. The forward's tiled taps serve reversed where its runs are
    # as long (a prefix of a tiled run is a shorter one: 3x3 taps with padding 1), else the
    # flipped weights are tiled here
    longest = max(p[3] for p in plans)
    taps, ctx.taps = getattr(ctx, "taps", None), None
    taps = (taps[::-1, ::-1] if taps is not None and taps.shape[2] >= longest
            else _tiled_taps(ctx, w[::-1, ::-1], longest))
    acc = ctx.pool.alloc((n, longest), g.dtype)  # every phase's runs in turn (per slab)
    runs = []
    for a, b, start, length, dst, nr, nq in plans:
        # phase (a, b)'s taps a, a + sh, ... flipped are rows kh-1-a, kh-1-a-sh, ... of taps
        flipped = taps[(kh - 1 - a) % sh::sh, (kw - 1 - b) % sw::sw, :length]
        flipped = flipped[len(flipped) - len(range(a, kh, sh)):,
                          flipped.shape[1] - len(range(b, kw, sw)):]
        runs.append((_Runs(gflat, n, img, pitch, flipped, start, c), acc[:, :length], dst,
                     nr, nq))

    def images(lo: int, hi: int) -> None:
        gpad[lo:hi, top:top + ho, left:left + wo] = g[lo:hi]
        for run, out, dst, nr, nq in runs:
            run(lo, hi, out[lo:hi])
            dst[lo:hi] = out[lo:hi].reshape(-1, nr, wg, c)[:, :, :nq]

    parallel_for(n, images, n * img * (kh * kw + 3))
    # where g's canvas has the forward's width, each image's g rows with zeros after them
    # are one run of it: dW reads that instead of laying g out again
    ctx.gcanvas = (gflat, img, (top * wg + left) * c, wg)
    return dx


def _dw_vjp_w(ctx: Ctx, g: np.ndarray, dw: np.ndarray | None = None) -> np.ndarray:
    # dW[i, j] = sum over every output position of the tap's input times g: per phase, the
    # forward's runs against g laid out at the canvas width (zeros in the garbage columns)
    w = ctx.args[1]
    kh, kw, c = w.shape
    sh, sw = ctx.params["stride"]
    n, ho, wo, _ = g.shape
    hq, wq = _grid(w, (sh, sw), (ho, wo))
    pitch, img, length = wq * c, hq * wq * c, ho * wq * c
    s = g.itemsize
    flat, phases = ctx.canvas
    taps = [(len(range(a, kh, sh)), len(range(b, kw, sw))) for a, b in phases]
    slabs: dict[int, list[np.ndarray]] = {}  # per slab of images: each phase's partial sums

    lent, ctx.gcanvas = getattr(ctx, "gcanvas", None), None
    if lent is not None and (lent[3] != wq or lent[2] + length > lent[1]):
        lent = None  # another width, or its runs would leave the image: lay g out here

    def images(lo: int, hi: int) -> None:
        if lent is None:
            gq = ctx.pool.alloc((hi - lo, ho, wq, c), g.dtype)
            gq[:, :, wo:] = 0  # the garbage columns
            gq[:, :, :wo] = g[lo:hi]
            g2 = gq.reshape(hi - lo, length)
        else:  # row r of g at canvas row top + r from column left: run start + r*pitch
            gflat, gimg, start, _ = lent
            g2 = _view(gflat, start + lo * gimg, (hi - lo, length), (gimg * s, s))
        parts, at = [], 0
        buf = ctx.pool.alloc((kh * kw * length,), g.dtype)  # each tap in one phase: all sums
        for p, (kr, kq) in enumerate(taps):
            win = _view(flat, (p * n + lo) * img, (hi - lo, kr, kq, length),
                        (img * s, pitch * s, c * s, s))
            part = buf[at:at + kr * kq * length].reshape(kr, kq, length)
            at += part.size
            parts.append(einsum("nijl,nl->ijl", win, g2, out=part))
        slabs[lo] = parts

    parallel_for(n, images, n * length * (kh * kw + 1))
    dw = np.empty(w.shape, g.dtype) if dw is None else dw
    partials = list(slabs.values())
    for p, ((a, b), (kr, kq)) in enumerate(zip(phases, taps, strict=True)):
        part = partials[0][p]
        for other in partials[1:]:
            part += other[p]
        # each tap's sum over the run's positions as an einsum (numpy's reduction over that
        # strided axis walks the C-channel rows one short loop at a time: 52 against 12 us
        # for the MobileNet's 14x14x16 layer, (3, 3, 224, 16))
        einsum("ijrc->ijc", part.reshape(kr, kq, ho * wq, c), out=dw[a::sh, b::sw])
    return dw


def _dw_vjp_b(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        return channel_sum(g)
    out[...] = channel_sum(g)
    return out


depthwise_conv2d_p = Primitive("depthwise_conv2d", _dw_fwd, saves=(0, 1))
defvjp(depthwise_conv2d_p, _dw_vjp_x, _dw_vjp_w, _dw_vjp_b)
defvjp_into(depthwise_conv2d_p, _dw_vjp_x, _dw_vjp_w, _dw_vjp_b)  # straight into zeroed grads


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
    out = ctx.alloc((n, h, w, c), g.dtype)
    np.copyto(out, (g * (1.0 / (h * w)))[:, None, None, :])
    return out


global_avg_pool2d_p = Primitive("global_avg_pool2d", _gap_fwd)
defvjp(global_avg_pool2d_p, _gap_vjp)


def global_avg_pool2d(x: Operand) -> Tensor:
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""
    return apply(global_avg_pool2d_p, tensor(x))
