"""An output head and its softmax cross-entropy as one op, a block of rows at a time.

A language model's head turns N hidden rows into N x vocab logits; the loss turns those into
softmax probabilities and, for the backward pass, into their gradient. Written as two ops, the
(N, vocab) logits and the (N, vocab) probabilities both exist whole (at the tiny GPT's
benchmark shape 8 MB each: with LoRA, most of what a step holds). `head_cross_entropy(h, w,
labels)` never holds either: for each block of HEAD_ELEMS // vocab rows it computes the
logits, their log-sum-exp and loss, turns them into the gradient of the mean loss w.r.t. the
logits in place, and from that the rows' gradient w.r.t. h (an (N, dim) buffer) and, when the
head weight trains, its part of the weight's gradient (accumulated in a (vocab, dim) buffer)
and of the bias's. So the forward already does the backward's products (the same three GEMMs
as the two ops, none recomputed); the VJPs scale what it kept by the incoming gradient. The
weight is an embedding table (vocab, dim) (`tied=True`, the logits are h @ w^T) or a Dense
weight (dim, vocab) with an optional bias; a frozen head (LoRA's base, a frozen table) gets no
weight gradient and costs nothing for one.

A frozen tied table may be held in int8 (`fedcore.engine.quant.quantize_rows`: codes
(vocab, dim), one scale per row): the op then dequantizes HEAD_QBLOCK_ELEMS-sized chunks of
rows into one scratch buffer for each block's logits and again for its rows' gradient, so
neither the float32 table nor a full-size copy of it exists.

`deferred_logits(h, w)` is how a model uses it without changing how it is trained: it returns
a Tensor that stands for h @ w^T (+ b) but computes nothing yet. `softmax_cross_entropy` of it
runs the fused op; anything else that touches it (its data, another op, a second loss)
computes the plain logits then, recorded as the unfused product would have been, so every
other use gives what it gave before. It defers only while gradients are being recorded
outside a tracer (`fedcore.engine.hybrid` plans its own step): evaluation gets plain logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .autograd import Ctx, Primitive, _tracing, apply, defvjp, defvjp_into
from .checks import check_float
from .ops import Operand, tensor
from .parallel import matmul as gemm
from .parallel import parallel_for
from .tensor import Tensor, enable_grad, is_grad_enabled

__all__ = ["HEAD_ELEMS", "HEAD_QBLOCK_ELEMS", "DeferredLogits", "check_labels",
           "deferred_logits", "head_cross_entropy"]

#: logits one block holds (1 MiB of float32): at vocab 2,000, 131 rows
HEAD_ELEMS = 1 << 18

#: dequantized table elements one chunk of an int8 head holds (256 KiB of float32)
HEAD_QBLOCK_ELEMS = 1 << 16


def check_labels(n: int, classes: int, labels: np.ndarray) -> None:
    """Integer labels, one per row of N, each in [0, classes): TypeError / ValueError."""
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match logits ({n}, {classes})")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")


def _check(h: np.ndarray, w: np.ndarray, bias: np.ndarray | None, tied: bool,
           scales: np.ndarray | None = None) -> int:
    """The vocabulary size, once h (N, dim), w and bias (or int8 w and its per-row scales)
    are seen to fit."""
    check_float("head_cross_entropy", "hidden", h)
    if scales is None:
        check_float("head_cross_entropy", "weight", w)
    elif w.dtype != np.int8 or w.ndim != 2 or scales.shape != (w.shape[0],):
        raise ValueError(f"head_cross_entropy: int8 table {w.shape} {w.dtype} needs one "
                         f"scale per row, got scales {scales.shape}")
    dim = w.shape[1] if tied else w.shape[0]
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != dim:
        layout = "(vocab, dim)" if tied else "(dim, vocab)"
        raise ValueError(f"head_cross_entropy: hidden {h.shape} does not fit a {layout} "
                         f"weight {w.shape}")
    vocab = w.shape[0] if tied else w.shape[1]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"head_cross_entropy: bias {bias.shape} does not fit vocab {vocab}")
    return vocab


def _softmax_rows(p: np.ndarray, labels: np.ndarray, lognorm: np.ndarray,
                  picked: np.ndarray) -> None:
    """Logits `p` -> softmax probabilities in place; each row's shifted label logit into
    `picked` and log of its normaliser into `lognorm` (rows split over the threads)."""
    def slab(lo: int, hi: int) -> None:
        q = p[lo:hi]
        q -= q.max(axis=1, keepdims=True)
        picked[lo:hi] = q[np.arange(hi - lo), labels[lo:hi]]
        np.exp(q, out=q)
        norm = q.sum(axis=1, keepdims=True)
        q /= norm
        np.log(norm[:, 0], out=lognorm[lo:hi])

    parallel_for(len(p), slab, 4 * p.size)  # exp costs several simple passes


def _chunks(codes: np.ndarray, scales: np.ndarray, scratch: np.ndarray):  # noqa: ANN202
    """(v0, v1, rows v0:v1 of the table dequantized into `scratch`) over the int8 table."""
    rows = scratch.shape[0]
    for v0 in range(0, codes.shape[0], rows):
        v1 = min(codes.shape[0], v0 + rows)
        wb = scratch[:v1 - v0]
        np.multiply(codes[v0:v1], scales[v0:v1, None], out=wb)
        yield v0, v1, wb


def _qlogits(hb: np.ndarray, codes: np.ndarray, scales: np.ndarray, scratch: np.ndarray,
             out: np.ndarray) -> np.ndarray:
    """hb @ table^T into `out` (rows, vocab), a chunk of table rows at a time."""
    for v0, v1, wb in _chunks(codes, scales, scratch):
        gemm(hb, wb.T, out=out[:, v0:v1])
    return out


def _qrows_grad(p: np.ndarray, codes: np.ndarray, scales: np.ndarray, scratch: np.ndarray,
                part: np.ndarray, out: np.ndarray) -> None:
    """p @ table into `out` (rows, dim): the chunks' products summed."""
    for v0, v1, wb in _chunks(codes, scales, scratch):
        if v0 == 0:
            gemm(p[:, v0:v1], wb, out=out)
        else:
            out += gemm(p[:, v0:v1], wb, out=part[:len(p)])


def _fwd_q(ctx: Ctx, h: np.ndarray, codes: np.ndarray, labels: np.ndarray,
           scales: np.ndarray, grads: tuple[bool, bool, bool]) -> np.ndarray:
    """The op over a frozen int8 tied table (no weight gradient: it is not trained)."""
    return _fwd(ctx, h, codes, labels, tied=True, grads=(grads[0], False, False),
                scales=scales)


def _fwd(ctx: Ctx, h: np.ndarray, w: np.ndarray, labels: np.ndarray, *rest: np.ndarray,
         tied: bool, grads: tuple[bool, bool, bool],
         scales: np.ndarray | None = None) -> np.ndarray:
    bias = rest[0] if rest else None
    vocab = _check(h, w, bias, tied, scales)
    n = h.shape[0]
    check_labels(n, vocab, labels)
    need_h, need_w, need_b = grads
    dt = h.dtype
    rows = max(1, min(n, HEAD_ELEMS // vocab))
    wt = w.T if tied else w  # (dim, vocab): logits = h @ wt
    block = ctx.pool.alloc((rows, vocab), dt)
    lognorm, picked = ctx.pool.alloc((rows,), np.float64), ctx.pool.alloc((rows,), np.float64)
    dh = ctx.alloc(h.shape, dt) if need_h else None
    dw = ctx.alloc(w.shape, dt) if need_w else None
    part = ctx.pool.alloc(w.shape, dt) if need_w and rows < n else None
    db = ctx.alloc((vocab,), dt) if need_b else None
    if scales is not None:  # a chunk of dequantized table rows, and the rows' partial sums
        scratch = ctx.pool.alloc((max(1, min(vocab, HEAD_QBLOCK_ELEMS // w.shape[1])),
                                  w.shape[1]), dt)
        qpart = ctx.pool.alloc((rows, w.shape[1]), dt) if need_h else None
    if db is not None:
        db.fill(0)
    if dw is not None and n == 0:  # no rows: no block writes it
        dw.fill(0)
    total = 0.0
    inv_n = 1.0 / max(n, 1)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        m, hb, lb = i1 - i0, h[i0:i1], labels[i0:i1]
        if scales is None:
            p = gemm(hb, wt, out=block[:m])
        else:
            p = _qlogits(hb, w, scales, scratch, block[:m])
        if bias is not None:
            p += bias
        _softmax_rows(p, lb, lognorm[:m], picked[:m])
        total += float(lognorm[:m].sum() - picked[:m].sum())
        if not (need_h or need_w or need_b):
            continue
        p[np.arange(m), lb] -= 1.0  # d(mean loss)/d(logits) = (softmax - onehot) / N
        p *= inv_n
        if dh is not None and scales is not None:
            _qrows_grad(p, w, scales, scratch, qpart, dh[i0:i1])
        elif dh is not None:
            gemm(p, w if tied else w.T, out=dh[i0:i1])
        if dw is not None:
            pw = p.T if tied else hb.T  # tied: dW = P^T h (vocab, dim); else h^T P
            ph = hb if tied else p
            if i0 == 0:
                gemm(pw, ph, out=dw)
            else:
                dw += gemm(pw, ph, out=part)
        if db is not None:
            db += p.sum(axis=0)
    ctx.grads = [dh, dw, db]
    out = ctx.alloc(())
    out[...] = total * inv_n
    return out


def _take(ctx: Ctx, i: int) -> np.ndarray:
    """Gradient i the forward computed, handed over once (a second backward raises)."""
    grads = getattr(ctx, "grads", None)
    got = None if grads is None else grads[i]
    if got is None:
        raise RuntimeError("head_cross_entropy backward ran twice on one graph (or the "
                           "forward was not recorded)")
    grads[i] = None
    return got


def _vjp(i: int) -> Callable[[Ctx, np.ndarray], np.ndarray]:
    def vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
        got = _take(ctx, i)
        got *= g  # the forward's gradient is for an incoming 1
        return got
    return vjp


def _vjp_into(i: int) -> Callable[[Ctx, np.ndarray, np.ndarray], None]:
    def vjp_into(ctx: Ctx, g: np.ndarray, out: np.ndarray) -> None:
        np.multiply(_take(ctx, i), g, out=out)
    return vjp_into


# the VJPs read nothing saved: what they scale was computed in the forward
head_xent_p = Primitive("head_cross_entropy", _fwd)
defvjp(head_xent_p, _vjp(0), _vjp(1), None, _vjp(2))
defvjp_into(head_xent_p, None, _vjp_into(1), None, _vjp_into(2))
head_xent_q_p = Primitive("head_cross_entropy_int8", _fwd_q)
defvjp(head_xent_q_p, _vjp(0), None, None, None)


def _recording(*ts: Tensor) -> tuple[bool, ...]:
    on = is_grad_enabled() and _tracing.hook is None
    return tuple(on and t is not None and t._node is not None for t in ts)


def head_cross_entropy(h: Operand, w: Operand, labels: Tensor | np.ndarray,
                       bias: Operand | None = None, tied: bool = True,
                       scales: Operand | None = None) -> Tensor:
    """Mean over rows of -log softmax(logits)[i, labels[i]] for logits `h @ w^T` (`tied`,
    w (vocab, dim)) or `h @ w + bias` (w (dim, vocab)), fused and in row blocks (see the
    module docstring); differentiable in h, w and bias. `scales`: w is a frozen tied int8
    table with these per-row scales (differentiable in h only)."""
    ts = [tensor(h), tensor(w), tensor(labels)]
    b = None if bias is None else tensor(bias)
    need = _recording(ts[0], ts[1], b)
    if scales is not None:
        if bias is not None or not tied:
            raise ValueError("head_cross_entropy: an int8 table is a tied head without bias")
        return apply(head_xent_q_p, *ts, tensor(scales), grads=need)
    if b is not None:
        ts.append(b)
    return apply(head_xent_p, *ts, tied=bool(tied), grads=need)


class DeferredLogits(Tensor):
    """Logits `h @ w^T` (`tied`) or `h @ w + bias` not computed yet (see the module docstring).

    The graph slots `_var` and `_node` compute the plain logits on first use and then belong
    to them, so every op and every reader sees an ordinary Tensor; shape, dtype and ndim need
    nothing computed. `cross_entropy(labels)` is the fused loss while nothing has been.
    """

    __slots__ = ("_parts", "_plain", "_make")

    def __init__(self, h: Tensor, w: Tensor, bias: Tensor | None, tied: bool,
                 make: Callable[[], Tensor], scales: Tensor | None = None):
        self._parts = (h, w, bias, tied, scales)
        self._plain: Tensor | None = None
        self._make = make
        self._grad = None

    def _logits(self) -> Tensor:
        plain = self._plain
        if plain is None:
            with enable_grad():  # recorded as in the forward that deferred it
                plain = self._plain = self._make()
            self._make = None
        return plain

    @property
    def _var(self) -> Any:  # noqa: D102 - Tensor's slot, computed on first use
        return Tensor._var.__get__(self._logits())

    @property
    def _node(self) -> Any:  # noqa: D102
        return Tensor._node.__get__(self._logits())

    @_node.setter
    def _node(self, node: Any) -> None:
        Tensor._node.__set__(self._logits(), node)

    @property
    def requires_grad(self) -> bool:  # deferred only when something needs a gradient
        return True

    @property
    def is_leaf(self) -> bool:
        return False

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, _, tied, _ = self._parts
        return (h.shape[0], w.shape[0] if tied else w.shape[1])

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return self._parts[0].dtype

    @property
    def size(self) -> int:
        n, v = self.shape
        return n * v

    def __len__(self) -> int:
        return self.shape[0]

    def cross_entropy(self, labels: Tensor | np.ndarray) -> Tensor:
        """The mean softmax cross-entropy of these logits against `labels`: fused while the
        logits were never computed, else over the computed ones."""
        if self._plain is not None:
            from .losses import softmax_cross_entropy

            return softmax_cross_entropy(self._plain, labels)
        h, w, bias, tied, scales = self._parts
        return head_cross_entropy(h, w, labels, bias, tied, scales)

    def __repr__(self) -> str:
        state = "computed" if self._plain is not None else "deferred"
        return f"DeferredLogits(shape={self.shape}, {state})"


def deferred_logits(h: Tensor, w: Tensor, make: Callable[[], Tensor],
                    bias: Tensor | None = None, tied: bool = True,
                    scales: Tensor | None = None) -> Tensor:
    """`make()` (the plain logits of 2-D `h` against `w`; `scales`: w is a tied int8 table
    with these per-row scales) deferred while gradients are being recorded outside a tracer
    and h or w needs one, else computed now (module docstring)."""
    if not any(_recording(h, w, bias)):
        return make()
    return DeferredLogits(h, w, bias, tied, make, scales)
