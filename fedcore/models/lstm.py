"""The reference word-level language model: embedding -> LSTM -> dense over the vocabulary."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, reshape
from ..engine.ops import Operand
from ..nn import LSTM, Dense, Embedding, Module
from .registry import register_model

__all__ = ["LanguageModel", "lstm"]


class LanguageModel(Module):
    """Token ids (B, T) -> next-token logits (B*T, vocab), rows in batch-major order.

    The row order matches `targets.reshape(-1)` for (B, T) targets, so the standard
    `softmax_cross_entropy(model(x), y.reshape(-1))` trains it.
    """

    per_sample = True

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.vocab_size, self.hidden = vocab_size, hidden
        self.embed = Embedding(vocab_size, embed_dim, rng=rng)
        self.rnn = LSTM(embed_dim, hidden, rng=rng)
        self.head = Dense(hidden, vocab_size, init="glorot", rng=rng)

    def forward(self, tokens: Operand) -> Tensor:
        """Logits for every position of every sequence."""
        hs = self.rnn(self.embed(tokens))
        return self.head(reshape(hs, -1, self.hidden))


@register_model("lstm")
def lstm(vocab_size: int | None = None, embed_dim: int = 128, hidden: int = 256,
         seed: int = 0, num_classes: int | None = None,
         input_dim: int | None = None) -> LanguageModel:
    """A one-layer LSTM language model. `num_classes` (what a scenario passes) stands in for
    `vocab_size`; `input_dim` (the sequence length) is accepted and unused."""
    del input_dim  # any sequence length works
    vocab = vocab_size if vocab_size is not None else num_classes
    if vocab is None or vocab < 2:
        raise ValueError(f"lstm: vocab_size must be >= 2, got {vocab}")
    if isinstance(hidden, list | tuple):
        hidden = int(hidden[0])
    model = LanguageModel(int(vocab), int(embed_dim), int(hidden), seed)
    model.flatten_parameters()
    return model
