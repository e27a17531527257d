"""Multi-head self-attention with grouped-query heads and rotary positions."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, attention, reshape, rope
from ..engine.ops import Operand, tensor
from .layers import Dense
from .module import Module

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(Module):
    """Self-attention over (B, T, d_model): projections `q`, `k`, `v`, `o` (no biases).

    `n_kv_heads` < `n_heads` is grouped-query attention (each key/value head serves
    n_heads / n_kv_heads query heads; 1 is multi-query); `rope` rotates queries and keys by
    position; `causal` masks the future. The attention itself is the blocked
    `fedcore.engine.attention` (memory linear in T).
    """

    per_sample = True

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 causal: bool = True, rope: bool = True, rope_base: float = 10000.0,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__()
        n_kv = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or n_kv <= 0 or n_heads % n_kv or d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model {d_model} must split into "
                             f"{n_heads} heads, a multiple of {n_kv} key/value heads")
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv
        self.head_dim = d_model // n_heads
        self.causal, self.use_rope, self.rope_base = causal, rope, float(rope_base)
        kv = n_kv * self.head_dim
        self.q = Dense(d_model, d_model, bias=False, init="glorot", rng=rng)
        self.k = Dense(d_model, kv, bias=False, init="glorot", rng=rng)
        self.v = Dense(d_model, kv, bias=False, init="glorot", rng=rng)
        self.o = Dense(d_model, d_model, bias=False, init="glorot", rng=rng)

    def forward(self, x: Operand) -> Tensor:
        """Attend over the sequence axis of (B, T, d_model); returns (B, T, d_model)."""
        t = tensor(x)
        b, n = t.shape[0], t.shape[1]
        rows = reshape(t, b * n, self.d_model)
        q = reshape(self.q(rows), b, n, self.n_heads, self.head_dim)
        k = reshape(self.k(rows), b, n, self.n_kv_heads, self.head_dim)
        v = reshape(self.v(rows), b, n, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            q, k = rope(q, self.rope_base), rope(k, self.rope_base)
        out = attention(q, k, v, causal=self.causal)
        return reshape(self.o(reshape(out, b * n, self.d_model)), b, n, self.d_model)

    def extra_repr(self) -> str:
        return (f"{self.d_model}, heads={self.n_heads}, kv_heads={self.n_kv_heads}, "
                f"causal={self.causal}, rope={self.use_rope}")
