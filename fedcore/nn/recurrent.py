"""Sequence layers: Embedding, LSTM and GRU (batch-first)."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, embedding, gru, lstm
from ..engine.ops import Operand
from ..engine.quant import qembedding
from .module import Module, Parameter

__all__ = ["GRU", "LSTM", "Embedding"]


def _uniform(rng: np.random.Generator, limit: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


class Embedding(Module):
    """Lookup table (num_embeddings, dim): integer ids (...) -> vectors (..., dim).

    Initialised uniform in [-0.1, 0.1] (the classic word-level language-model choice); the
    gradient only touches the rows that were looked up. A frozen table may be held in int8
    (`weight` the codes, `scales` one per row: LoRA's int8 base, `fedcore.nn.lora`); each
    looked-up row is dequantized on its own.
    """

    per_sample = True

    def __init__(self, num_embeddings: int, dim: int, *, init_range: float = 0.1,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__()
        if num_embeddings <= 0 or dim <= 0:
            raise ValueError(f"Embedding sizes must be positive, got ({num_embeddings}, {dim})")
        rng = rng if rng is not None else np.random.default_rng(seed)
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = Parameter(_uniform(rng, init_range, (num_embeddings, dim)), name="weight")
        self.scales: Tensor | None = None  # int8 codes in `weight`: their per-row scales

    def forward(self, ids: Operand) -> Tensor:
        """Look up integer ids."""
        if self.scales is not None:
            return qembedding(ids, self.weight, self.scales)
        return embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"


class _Recurrent(Module):
    per_sample = True
    ngates = 0

    def __init__(self, input_size: int, hidden_size: int,
                 rng: np.random.Generator | None, seed: int | None):
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"{type(self).__name__} sizes must be positive, got "
                             f"({input_size}, {hidden_size})")
        self.input_size, self.hidden_size = input_size, hidden_size
        self._rng = rng if rng is not None else np.random.default_rng(seed)
        k = 1.0 / np.sqrt(hidden_size)  # PyTorch's U(-1/sqrt(H), 1/sqrt(H))
        g = self.ngates * hidden_size
        self.w_ih = Parameter(_uniform(self._rng, k, (input_size, g)), name="w_ih")
        self.w_hh = Parameter(_uniform(self._rng, k, (hidden_size, g)), name="w_hh")
        self.last_state: list[np.ndarray] = []

    def join_shards(self, shards: list[Module]) -> None:
        """`last_state`: the batch's final states, this module's shard first."""
        if self.last_state and all(s.last_state for s in shards):
            parts = [self.last_state, *(s.last_state for s in shards)]
            self.last_state[:] = [np.concatenate(rows) for rows in zip(*parts, strict=True)]

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class LSTM(_Recurrent):
    """Single-layer LSTM over (B, T, input_size) input, returning every hidden state (B, T, H).

    Weights w_ih (input, 4H), w_hh (H, 4H), one bias (4H,), gates ordered (i, f, o, g); the
    forget-gate bias starts at 1. After each forward `last_state` holds copies of the final
    [h, c] (B, H), to feed back as the next batch's state in truncated BPTT.
    """

    ngates = 4

    def __init__(self, input_size: int, hidden_size: int, *,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__(input_size, hidden_size, rng, seed)
        k = 1.0 / np.sqrt(hidden_size)
        b = _uniform(self._rng, k, (4 * hidden_size,))
        b[hidden_size:2 * hidden_size] += 1.0
        self.bias = Parameter(b, name="bias")

    def forward(self, x: Operand, h0: Operand | None = None,
                c0: Operand | None = None) -> Tensor:
        """All hidden states for input `x`; initial states default to zeros."""
        return lstm(x, self.w_ih, self.w_hh, self.bias, h0, c0, state_out=self.last_state)


class GRU(_Recurrent):
    """Single-layer GRU over (B, T, input_size) input, returning every hidden state (B, T, H).

    PyTorch's formulation and gate order (r, z, n), with separate input and recurrent biases
    (3H,) each. After each forward `last_state` holds a copy of the final [h] (B, H).
    """

    ngates = 3

    def __init__(self, input_size: int, hidden_size: int, *,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        super().__init__(input_size, hidden_size, rng, seed)
        k = 1.0 / np.sqrt(hidden_size)
        self.b_ih = Parameter(_uniform(self._rng, k, (3 * hidden_size,)), name="b_ih")
        self.b_hh = Parameter(_uniform(self._rng, k, (3 * hidden_size,)), name="b_hh")

    def forward(self, x: Operand, h0: Operand | None = None) -> Tensor:
        """All hidden states for input `x`; the initial state defaults to zeros."""
        return gru(x, self.w_ih, self.w_hh, self.b_ih, self.b_hh, h0,
                   state_out=self.last_state)
