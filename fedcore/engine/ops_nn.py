"""Activations, softmax, dropout and embedding lookup as engine primitives.

SiLU (x * sigmoid(x)) and the fused SwiGLU gate silu(a) * b (one op: no silu(a) buffer kept)
save their inputs and recompute the sigmoid in backward.
Each VJP reads the least it can: tanh, sigmoid and softmax save their *output* (their
derivatives are functions of it), GELU saves its input and recomputes the inner tanh, dropout
keeps a one-byte mask. Sigmoid is computed as 0.5 * tanh(x / 2) + 0.5, which never overflows.
Embedding's gradient scatters the output gradient rows into the looked-up rows: first
occurrences by assignment, repeats by `np.add.at`, so repeated tokens accumulate correctly and
untouched rows stay zero.
"""

from __future__ import annotations

import math

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["dropout", "embedding", "gelu", "sigmoid", "silu", "softmax", "swiglu", "tanh"]

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


# -- tanh, sigmoid ---------------------------------------------------------------------------
def _tanh_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    check_float("tanh", "input", x)
    return np.tanh(x, out=ctx.alloc(x.shape, x.dtype))


def _tanh_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    y = ctx.ans
    out = np.multiply(y, y)
    np.subtract(1.0, out, out=out)
    out *= g
    return out


def _sigmoid_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    check_float("sigmoid", "input", x)
    out = np.multiply(x, 0.5, out=ctx.alloc(x.shape, x.dtype))
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _sigmoid_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    y = ctx.ans
    out = np.subtract(1.0, y)
    out *= y
    out *= g
    return out


tanh_p = Primitive("tanh", _tanh_fwd, saves_output=True)
defvjp(tanh_p, _tanh_vjp)
sigmoid_p = Primitive("sigmoid", _sigmoid_fwd, saves_output=True)
defvjp(sigmoid_p, _sigmoid_vjp)


def tanh(x: Operand) -> Tensor:
    """Elementwise hyperbolic tangent."""
    return apply(tanh_p, tensor(x))


def sigmoid(x: Operand) -> Tensor:
    """Elementwise logistic function 1 / (1 + exp(-x)), computed without overflow."""
    return apply(sigmoid_p, tensor(x))


# -- SiLU and the SwiGLU gate ----------------------------------------------------------------
def _sig(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """sigmoid(x) into `out`, as 0.5 tanh(x / 2) + 0.5 (no overflow)."""
    np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _dsilu(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid(a), d silu / da = s (1 + a (1 - s))) as new arrays."""
    s = _sig(a, np.empty_like(a))
    d = np.subtract(1.0, s)
    d *= a
    d += 1.0
    d *= s
    return s, d


def _silu_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    check_float("silu", "input", x)
    out = _sig(x, ctx.alloc(x.shape, x.dtype))
    out *= x
    return out


def _silu_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    d = _dsilu(ctx.args[0])[1]
    d *= g
    return d


#: elements per piece of the SwiGLU forward and backward: their temporaries stay in a core's L2
SWIGLU_PIECE = 1 << 15


def _swiglu_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    check_float("swiglu", "gate", a)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"swiglu: gate {a.shape} {a.dtype} and value {b.shape} {b.dtype} "
                         f"must match")
    ctx.grads = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    out = ctx.alloc(a.shape, a.dtype)
    fa, fb, fo = (np.ascontiguousarray(x).reshape(-1) for x in (a, b, out))

    def pieces(lo: int, hi: int) -> None:  # silu(a) b, one L2-sized piece at a time
        for p0 in range(lo * SWIGLU_PIECE, min(hi * SWIGLU_PIECE, fo.size), SWIGLU_PIECE):
            p1 = min(p0 + SWIGLU_PIECE, fo.size)
            o = _sig(fa[p0:p1], fo[p0:p1])
            o *= fa[p0:p1]
            o *= fb[p0:p1]

    n = -(-fo.size // SWIGLU_PIECE)
    parallel_for(n, pieces, 8 * fo.size, calls=6 * n)  # L2 pieces: short calls
    return out


def _swiglu_grads(ctx: Ctx, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d gate, d value), computed together once per backward: one sigmoid, and
    d gate = g b (s + silu (1 - s)), d value = g silu, with silu = a s; in L2-sized pieces,
    split over the intra-op threads."""
    if getattr(ctx, "grads", None) is not None:
        return ctx.grads
    a, b = ctx.args[0], ctx.args[1]
    dt = np.result_type(a, g)
    da, db = ctx.alloc(a.shape, dt), ctx.alloc(a.shape, dt)  # recycled: no page faults
    flat = [np.ascontiguousarray(x).reshape(-1) for x in (a, b, g)]
    fa, fb = da.reshape(-1), db.reshape(-1)

    def pieces(lo: int, hi: int) -> None:
        tmp = ctx.pool.alloc((3, SWIGLU_PIECE), dt)  # one set per thread, reused per piece
        for p0 in range(lo * SWIGLU_PIECE, min(hi * SWIGLU_PIECE, fa.size), SWIGLU_PIECE):
            p1 = min(p0 + SWIGLU_PIECE, fa.size)
            x, y, gg = flat[0][p0:p1], flat[1][p0:p1], flat[2][p0:p1]
            sig, silu, t = tmp[0, :p1 - p0], tmp[1, :p1 - p0], tmp[2, :p1 - p0]
            _sig(x, sig)
            np.multiply(x, sig, out=silu)
            np.multiply(gg, silu, out=fb[p0:p1])  # d value
            np.multiply(silu, sig, out=t)
            np.subtract(silu, t, out=t)
            t += sig  # s + silu (1 - s): d silu / d gate
            np.multiply(gg, y, out=fa[p0:p1])
            fa[p0:p1] *= t

    n = -(-fa.size // SWIGLU_PIECE)
    parallel_for(n, pieces, 12 * fa.size, calls=11 * n)
    ctx.grads = (da, db)
    return ctx.grads


def _swiglu_vjp_a(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return _swiglu_grads(ctx, g)[0]


def _swiglu_vjp_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return _swiglu_grads(ctx, g)[1]


silu_p = Primitive("silu", _silu_fwd, saves=(0,))
defvjp(silu_p, _silu_vjp)
swiglu_p = Primitive("swiglu", _swiglu_fwd, saves=(0, 1), remat=True)
defvjp(swiglu_p, _swiglu_vjp_a, _swiglu_vjp_b)


def silu(x: Operand) -> Tensor:
    """SiLU / swish: x * sigmoid(x)."""
    return apply(silu_p, tensor(x))


def swiglu(gate: Operand, value: Operand) -> Tensor:
    """The SwiGLU gate silu(gate) * value (Shazeer 2020), fused into one op."""
    return apply(swiglu_p, tensor(gate), tensor(value))


# -- GELU (tanh approximation) --------------------------------------------------------------
def _gelu_inner(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """tanh(c * (x + a * x^3)) into `out`."""
    np.multiply(x, x, out=out)
    out *= _GELU_A
    out += 1.0
    out *= x
    out *= _GELU_C
    return np.tanh(out, out=out)


def _gelu_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    check_float("gelu", "input", x)
    out = _gelu_inner(x, ctx.alloc(x.shape, x.dtype))
    out += 1.0
    out *= x
    out *= 0.5
    return out


def _gelu_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    x = ctx.args[0]
    t = _gelu_inner(x, np.empty_like(x))
    # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
    d = np.multiply(x, x)
    d *= 3 * _GELU_A
    d += 1.0
    d *= x
    d *= _GELU_C * 0.5
    sq = np.multiply(t, t)
    np.subtract(1.0, sq, out=sq)
    d *= sq
    t += 1.0
    t *= 0.5
    d += t
    d *= g
    return d


gelu_p = Primitive("gelu", _gelu_fwd, saves=(0,))
defvjp(gelu_p, _gelu_vjp)


def gelu(x: Operand) -> Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return apply(gelu_p, tensor(x))


# -- softmax -------------------------------------------------------------------------------
def _softmax_fwd(ctx: Ctx, x: np.ndarray, axis: int) -> np.ndarray:
    check_float("softmax", "input", x)
    out = ctx.alloc(x.shape, x.dtype)
    np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


def _softmax_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    y = ctx.ans
    s = np.multiply(g, y).sum(axis=ctx.params["axis"], keepdims=True)
    out = np.subtract(g, s)  # y * (g - sum(g * y)), never writing the saved output
    out *= y
    return out


softmax_p = Primitive("softmax", _softmax_fwd, saves_output=True)
defvjp(softmax_p, _softmax_vjp)


def softmax(x: Operand, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, max-shifted for stability."""
    return apply(softmax_p, tensor(x), axis=axis)


# -- dropout -------------------------------------------------------------------------------
def _dropout_fwd(ctx: Ctx, x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    check_float("dropout", "input", x)
    keep = ctx.alloc(x.shape, np.bool_)
    u = rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64)
    np.greater_equal(u, p, out=keep)
    del u
    out = np.multiply(x, keep, out=ctx.alloc(x.shape, x.dtype))
    out *= 1.0 / (1.0 - p)
    ctx.keep = keep
    return out


def _dropout_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    out = np.multiply(g, ctx.keep)
    out *= 1.0 / (1.0 - ctx.params["p"])
    return out


dropout_p = Primitive("dropout", _dropout_fwd)
defvjp(dropout_p, _dropout_vjp)


def dropout(x: Operand, p: float = 0.5, rng: np.random.Generator | int | None = None,
            training: bool = True) -> Tensor:
    """Zero each element with probability `p` and scale the rest by 1/(1-p) (inverted dropout).

    `rng` is a numpy Generator (or a seed) drawn from on every call, so a seeded layer gives
    the same masks run after run; in evaluation (`training=False`) or with p == 0 this is the
    identity and returns `x` itself.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    t = tensor(x)
    if not training or p == 0.0:
        return t
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return apply(dropout_p, t, p=float(p), rng=gen)


# -- embedding -----------------------------------------------------------------------------
def _embedding_fwd(ctx: Ctx, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices {idx.shape} must be integers, got {idx.dtype}")
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got {w.shape}")
    check_float("embedding", "weight", w)
    if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
        raise IndexError(f"embedding: indices {idx.shape} must lie in [0, {w.shape[0]}) for "
                         f"weight {w.shape}, got range [{idx.min()}, {idx.max()}]")
    out = ctx.alloc((*idx.shape, w.shape[1]), w.dtype)
    np.take(w, idx, axis=0, out=out)
    return out


def _embedding_vjp_w(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    idx = ctx.args[0]
    vocab, dim = ctx.shapes[1]
    dw = ctx.alloc((vocab, dim), g.dtype)
    dw.fill(0)
    ids, rows = idx.reshape(-1), g.reshape(-1, dim)
    # each id's first occurrence is a plain (fast) row assignment; only repeats need the
    # unbuffered scatter-add, which is ~3x slower per row
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.empty(ids.shape, np.bool_)
    first[:1] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    dw[sorted_ids[first]] = rows[order[first]]
    repeats = order[~first]
    if repeats.size:
        np.add.at(dw, ids[repeats], rows[repeats])
    return dw


embedding_p = Primitive("embedding", _embedding_fwd, saves=(0,))
defvjp(embedding_p, None, _embedding_vjp_w)


def embedding(indices: Operand, weight: Operand) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `indices`: (*indices, dim)."""
    return apply(embedding_p, tensor(indices), tensor(weight))
