"""Scaled dot-product attention in query blocks, and rotary position embeddings.

`attention(q, k, v)` takes q (B, T, H, D) and k, v (B, S, Hkv, D), the layout a projection
reshaped from (B*T, H*D) gives, and returns (B, T, H, D). With H > Hkv (grouped-query
attention) each group of H / Hkv query heads attends to one key/value head; the keys and
values are never repeated in memory. The scores are computed one block of query rows at a
time against the keys that block can see (under a causal mask, only keys up to the block's
last row), so no T x S score matrix exists: the forward keeps the output and each row's
logsumexp, the backward recomputes one block's probabilities from them (FlashAttention's
recipe, Dao et al. 2022, with whole key rows per block, which numpy runs fastest), for a
group of a few sequences at a time (GROUP_ELEMS). Scratch is O(block * S), not O(batch), and
the block shrinks as S grows, so memory is linear in the sequence length.

`rope(x)` rotates the two halves of each head's features by position-dependent angles (the
GPT-NeoX / LLaMA "rotate half" convention); its VJP is the inverse rotation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float, check_ndim, check_same_dtype
from .ops import Operand, tensor
from .parallel import parallel_for
from .tensor import Tensor

__all__ = ["CAUSAL_ROWS", "GROUP_ELEMS", "SCORE_ELEMS", "attention", "rope"]

#: score elements one block may hold (B * H * rows * keys): 4 MiB of float32 per buffer
SCORE_ELEMS = 1 << 20

#: score elements (sequences * H * rows * keys) one block holds at most when a whole
#: sequence's block fits (256 KiB of float32 per buffer): the sequences of a batch are
#: taken a few at a time, so the scores, their gradient and the key/value copies of one
#: group exist at once, not the whole batch's (at the tiny GPT's batch 8, T 128: 2 at a time)
GROUP_ELEMS = 1 << 16

#: query rows per block at most under a causal mask: block i reads keys [0, (i+1) * rows)
#: only, so smaller blocks skip more of the masked triangle (at T 128, 32 rows compute 62 %
#: of the full T x T scores) for a few more Python-level calls per block
CAUSAL_ROWS = 32


def _check(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> tuple[int, ...]:
    for name, a in (("query", q), ("key", k), ("value", v)):
        check_ndim("attention", name, a, 4, "(B, T, heads, head_dim)")
    check_same_dtype("attention", query=q, key=k, value=v)
    b, t, h, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"attention: key {k.shape} and value {v.shape} must have one shape")
    bk, s, hk, dk = k.shape
    if bk != b or dk != d:
        raise ValueError(f"attention: key {k.shape} does not match query {q.shape} "
                         f"(batch and head_dim must agree)")
    if hk < 1 or h % hk:
        raise ValueError(f"attention: {h} query heads are not a multiple of {hk} key/value "
                         f"heads")
    if causal and s != t:
        raise ValueError(f"attention: a causal mask needs as many keys as queries, got "
                         f"{t} queries and {s} keys")
    return b, t, h, d, s, hk


def block_rows(b: int, h: int, t: int, s: int, block: int | None,
               causal: bool = False) -> int:
    """Query rows per block: `block` if given, else as many as SCORE_ELEMS allows (>= 16);
    under a causal mask at most CAUSAL_ROWS, so blocks skip the keys they cannot see."""
    if block is not None:
        return max(1, min(int(block), t))
    rows = max(1, min(t, max(16, SCORE_ELEMS // max(1, b * h * s))))
    return min(rows, CAUSAL_ROWS) if causal else rows


def seq_group(h: int, rows: int, s: int) -> int:
    """Sequences a block's scores cover at once: as many as keep them within GROUP_ELEMS
    (at least one), so scratch does not grow with the batch."""
    return max(1, GROUP_ELEMS // max(1, h * rows * s))


def _rows(a: np.ndarray, hk: int, i0: int, i1: int) -> np.ndarray:
    """Rows [i0, i1) of (B, T, Hkv*G, D) as a (B, Hkv, G, rows, D) view (no copy: a block
    copies its rows once, into its own scratch)."""
    b, _, h, d = a.shape
    return a[:, i0:i1].reshape(b, i1 - i0, hk, h // hk, d).transpose(0, 2, 3, 1, 4)


def _kv(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(B, S, Hkv, D) -> contiguous (B*Hkv, S, D) in `out`."""
    b, s, hk, d = a.shape
    np.copyto(out.reshape(b, hk, s, d), a.transpose(0, 2, 1, 3))
    return out


@lru_cache(maxsize=32)
def _causal_bias(n: int, dtype: str) -> np.ndarray:
    """(n, n) additive mask: 0 on and below the diagonal, -inf above (read-only, cached)."""
    bias = np.triu(np.full((n, n), -np.inf, dtype), 1)
    bias.flags.writeable = False
    return bias


def _scores(ctx: Ctx, q: np.ndarray, kh: np.ndarray, hk: int, i0: int, i1: int,
            causal: bool, scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Block [i0, i1)'s scaled scores (B*Hkv, G*n, kend), masked; and its query rows, scaled,
    for queries q (B, T, H, D).

    The scale goes into the (n, D) query rows, not the (n, kend) scores; under a causal mask
    only the block's diagonal (n, n) square has masked keys, and gets an additive -inf
    triangle.
    """
    nb, g, n, d = q.shape[0], q.shape[2] // hk, i1 - i0, q.shape[3]
    bh = nb * hk
    kend = i1 if causal else kh.shape[1]
    qb = ctx.pool.alloc((bh, g * n, d), q.dtype)
    np.multiply(_rows(q, hk, i0, i1), scale, out=qb.reshape(nb, hk, g, n, d))
    s = ctx.pool.alloc((bh, g * n, kend), q.dtype)
    np.matmul(qb, kh[:, :kend].transpose(0, 2, 1), out=s)
    if causal:  # key j > query i0 + r is masked; only the block's diagonal square has any
        diag = s.reshape(bh, g, n, kend)[:, :, :, i0:kend]
        diag += _causal_bias(n, q.dtype.str)
    return s, qb, kend


def _work(b: int, h: int, t: int, s_len: int, d: int, causal: bool) -> int:
    """Elementwise-pass equivalents of one pass over the scores (for the intra-op split)."""
    return b * h * t * s_len * (d // 4 + 8) // (2 if causal else 1)


def _attn_fwd(ctx: Ctx, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool,
              scale: float | None, block: int | None) -> np.ndarray:
    b, t, h, d, s_len, hk = _check(q, k, v, causal)
    g = h // hk
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    dt = q.dtype
    out = ctx.alloc((b, t, h, d), dt)
    out5 = out.reshape(b, t, hk, g, d).transpose(0, 2, 3, 1, 4)  # (B, Hkv, G, T, D) view
    lse = ctx.alloc((b, hk, g, t), dt)  # kept for the backward
    rows = block_rows(b, h, t, s_len, block, causal)
    group = seq_group(h, rows, s_len)

    def images(b0: int, b1: int) -> None:  # every block of sequences [b0, b1), by groups
        kh = ctx.pool.alloc((min(group, b1 - b0) * hk, s_len, d), dt)
        vh = ctx.pool.alloc(kh.shape, dt)
        for c0 in range(b0, b1, group):
            c1 = min(b1, c0 + group)
            nb = c1 - c0
            qs, ks, vs = q[c0:c1], _kv(k[c0:c1], kh[:nb * hk]), _kv(v[c0:c1], vh[:nb * hk])
            for i0 in range(0, t, rows):
                i1 = min(t, i0 + rows)
                n = i1 - i0
                sc, qb, kend = _scores(ctx, qs, ks, hk, i0, i1, causal, scale)
                m = sc.max(axis=2, keepdims=True)
                sc -= m
                np.exp(sc, out=sc)
                tot = sc.sum(axis=2, keepdims=True)
                ob = np.matmul(sc, vs[:, :kend], out=qb)  # qb is free now: a block out's shape
                ob /= tot
                out5[c0:c1, :, :, i0:i1] = ob.reshape(nb, hk, g, n, d)
                np.log(tot, out=tot)
                tot += m
                lse[c0:c1, :, :, i0:i1] = tot.reshape(nb, hk, g, n)

    parallel_for(b, images, _work(b, h, t, s_len, d, causal))
    ctx.lse, ctx.scale, ctx.rows, ctx.grads = lse, scale, rows, None
    return out


def _attn_grads(ctx: Ctx, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dq, dk, dv, computed once per backward (the three VJPs share them)."""
    if ctx.grads is not None:
        return ctx.grads
    q, k, v = ctx.args[:3]
    o = ctx.ans
    causal = ctx.params["causal"]
    b, t, h, d = q.shape
    s_len, hk = k.shape[1], k.shape[2]
    gq = h // hk
    dt, scale, lse, rows = q.dtype, ctx.scale, ctx.lse, ctx.rows
    pool = ctx.pool
    dq, dk, dv = (pool.alloc(a.shape, a.dtype) for a in (q, k, v))  # recycled buffers
    dq5 = dq.reshape(b, t, hk, gq, d).transpose(0, 2, 3, 1, 4)  # (B, Hkv, G, T, D) view
    group = seq_group(h, rows, s_len)

    def images(b0: int, b1: int) -> None:  # every block of sequences [b0, b1), by groups
        kv_shape = (min(group, b1 - b0) * hk, s_len, d)
        kh, vh, dkh, dvh = (pool.alloc(kv_shape, dt) for _ in range(4))
        gb = pool.alloc((kv_shape[0], gq * rows, d), dt)
        for c0 in range(b0, b1, group):
            c1 = min(b1, c0 + group)
            nb = c1 - c0
            bh = nb * hk
            qs, gs = q[c0:c1], g[c0:c1]
            ks, vs = _kv(k[c0:c1], kh[:bh]), _kv(v[c0:c1], vh[:bh])
            dks, dvs = dkh[:bh], dvh[:bh]
            dks.fill(0)
            dvs.fill(0)
            delta = np.einsum("bthd,bthd->bth", gs, o[c0:c1])  # rowsum(dO * O), no temporary
            delta = delta.reshape(nb, t, hk, gq).transpose(0, 2, 3, 1)  # (nb, Hkv, G, T)
            for i0 in range(0, t, rows):
                i1 = min(t, i0 + rows)
                n = i1 - i0
                p, qb, kend = _scores(ctx, qs, ks, hk, i0, i1, causal, scale)  # qb: scaled
                p -= lse[c0:c1, :, :, i0:i1].reshape(bh, gq * n, 1)
                np.exp(p, out=p)
                gbn = gb[:bh, :gq * n]
                np.copyto(gbn.reshape(nb, hk, gq, n, d), _rows(gs, hk, i0, i1))
                dvs[:, :kend] += np.matmul(p.transpose(0, 2, 1), gbn)
                dp = np.matmul(gbn, vs[:, :kend].transpose(0, 2, 1))
                dp -= delta[:, :, :, i0:i1].reshape(bh, gq * n, 1)
                dp *= p  # dS / scale: the scale goes into the (n, D) and (kend, D) products
                del p
                dqb = np.matmul(dp, ks[:, :kend], out=gbn)  # gbn is free now
                np.multiply(dqb.reshape(nb, hk, gq, n, d), scale, out=dq5[c0:c1, :, :, i0:i1])
                dks[:, :kend] += np.matmul(dp.transpose(0, 2, 1), qb)  # qb carries the scale
                del dp, qb
            np.copyto(dk[c0:c1].transpose(0, 2, 1, 3), dks.reshape(nb, hk, s_len, d))
            np.copyto(dv[c0:c1].transpose(0, 2, 1, 3), dvs.reshape(nb, hk, s_len, d))

    parallel_for(b, images, 2 * _work(b, h, t, s_len, d, causal))
    ctx.grads = (dq, dk, dv)
    return ctx.grads


attention_p = Primitive("attention", _attn_fwd, saves=(0, 1, 2), saves_output=True)
defvjp(attention_p, lambda ctx, g: _attn_grads(ctx, g)[0],
       lambda ctx, g: _attn_grads(ctx, g)[1], lambda ctx, g: _attn_grads(ctx, g)[2])


def attention(q: Operand, k: Operand, v: Operand, causal: bool = True,
              scale: float | None = None, block: int | None = None) -> Tensor:
    """softmax(q k^T * scale [+ causal mask]) v per head; q (B, T, H, D), k/v (B, S, Hkv, D).

    `scale` defaults to 1/sqrt(D); `block` fixes the query rows per block (default: as many
    as SCORE_ELEMS score elements allow). H must be a multiple of Hkv (grouped-query).
    """
    return apply(attention_p, tensor(q), tensor(k), tensor(v), causal=bool(causal),
                 scale=None if scale is None else float(scale),
                 block=None if block is None else int(block))


# -- rotary position embeddings -------------------------------------------------------------
@lru_cache(maxsize=16)
def rope_tables(t: int, d: int, base: float, offset: int,
                dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The rotation as two full-width (T, 1, D) tables, [cos, cos] and [-sin, sin], so that
    rope(x) = x [cos, cos] + swap(x) [-sin, sin], swap exchanging the feature halves
    (read-only, cached)."""
    inv = base ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    ang = np.outer(np.arange(offset, offset + t, dtype=np.float64), inv)[:, None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    cos2 = np.concatenate([cos, cos], -1).astype(dtype)
    sin2 = np.concatenate([-sin, sin], -1).astype(dtype)
    cos2.flags.writeable = sin2.flags.writeable = False
    return cos2, sin2


def _rotate(x: np.ndarray, cos2: np.ndarray, sin2: np.ndarray, out: np.ndarray,
            inverse: bool = False) -> np.ndarray:
    """out = x [cos, cos] + swap(x) [-sin, sin] (minus, for the inverse rotation): the halves
    are swapped by two plain copies, so the products run over whole contiguous rows instead
    of half-rows (measured 2.6x faster at head_dim 32); sequences split over the threads."""
    h = x.shape[-1] // 2
    combine = np.subtract if inverse else np.add

    def seqs(lo: int, hi: int) -> None:
        xs, os_ = x[lo:hi], out[lo:hi]
        sw = np.empty_like(xs)
        sw[..., :h], sw[..., h:] = xs[..., h:], xs[..., :h]
        sw *= sin2
        np.multiply(xs, cos2, out=os_)
        combine(os_, sw, out=os_)

    parallel_for(x.shape[0], seqs, 4 * x.size, calls=6)
    return out


def _rope_fwd(ctx: Ctx, x: np.ndarray, base: float, offset: int) -> np.ndarray:
    check_ndim("rope", "input", x, 4, "(B, T, heads, head_dim)")
    check_float("rope", "input", x)
    if x.shape[-1] % 2:
        raise ValueError(f"rope: head_dim must be even, got {x.shape}")
    cos2, sin2 = rope_tables(x.shape[1], x.shape[-1], base, offset, x.dtype.str)
    return _rotate(x, cos2, sin2, ctx.alloc(x.shape, x.dtype))


def _rope_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    cos2, sin2 = rope_tables(g.shape[1], g.shape[-1], ctx.params["base"],
                             ctx.params["offset"], g.dtype.str)
    return _rotate(g, cos2, sin2, ctx.alloc(g.shape, g.dtype), inverse=True)


rope_p = Primitive("rope", _rope_fwd)
defvjp(rope_p, _rope_vjp)


def rope(x: Operand, base: float = 10000.0, offset: int = 0) -> Tensor:
    """Rotary position embedding of (B, T, heads, head_dim) at positions offset..offset+T-1."""
    return apply(rope_p, tensor(x), base=float(base), offset=int(offset))
