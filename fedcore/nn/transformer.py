"""Transformer pieces: the SwiGLU feed-forward, a pre-norm decoder block, a tied output head."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, add, matmul_nt, reshape, swiglu
from ..engine.checkpoint import checkpoint_rows
from ..engine.head import deferred_logits
from ..engine.ops import Operand, tensor
from ..engine.quant import int8_tensor, qmatmul
from .attention import MultiHeadAttention
from .layers import Dense
from .module import Module
from .norm import RMSNorm
from .recurrent import Embedding

__all__ = ["DecoderBlock", "SwiGLU", "TiedHead"]


class SwiGLU(Module):
    """down(silu(gate(x)) * up(x)) over the last axis (Shazeer 2020); no biases."""

    per_sample = True

    def __init__(self, d_model: int, hidden: int, *, rng: np.random.Generator | None = None,
                 seed: int | None = None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.gate = Dense(d_model, hidden, bias=False, init="glorot", rng=rng)
        self.up = Dense(d_model, hidden, bias=False, init="glorot", rng=rng)
        self.down = Dense(hidden, d_model, bias=False, init="glorot", rng=rng)

    def forward(self, x: Operand) -> Tensor:
        """Apply the gated feed-forward to (..., d_model)."""
        return self.down(swiglu(self.gate(x), self.up(x)))


class TiedHead(Module):
    """Output logits against an `Embedding`'s own table: x @ E^T, (..., dim) -> (..., vocab).

    The table is the same Parameter (one entry in the flat vector); its gradient gathers both
    the lookup's rows and the head's product. While a step records gradients, the logits of
    2-D input are deferred (`fedcore.engine.head`): a softmax cross-entropy of them runs as
    one op with the product, in row blocks, and never holds the (rows, vocab) logits. A frozen
    table held in int8 (`scales` set, as on the `Embedding`: `fedcore.nn.lora`) is read as
    codes, dequantized a chunk of rows at a time.
    """

    per_sample = True

    def __init__(self, embedding: Embedding):
        super().__init__()
        self.weight = embedding.weight
        self.scales: Tensor | None = embedding.scales

    def forward_flops(self, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
        """FLOPs of the logits for input (..., dim)."""
        vocab, dim = self.weight.shape
        return 2.0 * (int(np.prod(shape)) // dim) * dim * vocab, (*shape[:-1], vocab)

    def forward(self, x: Operand) -> Tensor:
        """Logits for every row of x."""
        t = tensor(x)
        vocab, dim = self.weight.shape
        if t.ndim == 2:
            return deferred_logits(t, self.weight, lambda: self._logits(t),
                                   scales=self.scales)
        lead = t.shape[:-1]
        return reshape(self._logits(reshape(t, -1, dim)), *lead, vocab)

    def _logits(self, t: Tensor) -> Tensor:
        """The plain (rows, vocab) logits of 2-D t."""
        if self.scales is None:
            return matmul_nt(t, self.weight)
        return qmatmul(t, int8_tensor(self.weight.data.T, "codes.T"), self.scales)


class DecoderBlock(Module):
    """x + attn(norm1(x)), then + mlp(norm2(x)): pre-norm, RMSNorm, GQA + RoPE, SwiGLU.

    `rowwise_mlp = True` computes norm2 and the feed-forward (both row-wise) a block of rows
    at a time and recomputes them in the backward pass (`checkpoint_rows`): the hidden layer
    never exists for the whole batch at once.
    """

    per_sample = True

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, hidden: int, *,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.norm1 = RMSNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, rng=rng)
        self.norm2 = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, hidden, rng=rng)
        self.rowwise_mlp = False

    def forward(self, x: Operand) -> Tensor:
        """One block over (B, T, d_model)."""
        h = add(x, self.attn(self.norm1(x)))
        if self.rowwise_mlp:
            return add(h, checkpoint_rows(self._feed_forward, h, self.mlp.gate.out_features))
        return add(h, self._feed_forward(h))

    def _feed_forward(self, h: Tensor) -> Tensor:
        return self.mlp(self.norm2(h))
