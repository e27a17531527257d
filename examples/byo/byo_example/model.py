"""A small residual MLP for tabular data, built from fedcore.nn layers."""

from __future__ import annotations

import numpy as np

from fedcore.engine import Tensor, add, relu
from fedcore.nn import Dense, LayerNorm, Module


class ResidualBlock(Module):
    """``x + W2 relu(W1 norm(x))``: keeps the width, eases training of deeper stacks."""

    def __init__(self, width: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.norm = LayerNorm(width)
        self.inner = Dense(width, width, rng=rng)
        self.outer = Dense(width, width, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        return add(x, self.outer(relu(self.inner(self.norm(x)))))


class ResidualMLP(Module):
    """Stem -> ``blocks`` residual blocks -> head (logits)."""

    def __init__(self, input_dim: int, num_classes: int, width: int, blocks: int,
                 seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.stem = Dense(input_dim, width, rng=rng)
        self.depth = blocks
        for i in range(blocks):  # each block an attribute, so it registers as a child module
            setattr(self, f"block{i}", ResidualBlock(width, rng))
        self.head = Dense(width, num_classes, init="glorot", rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        h = relu(self.stem(x))
        for i in range(self.depth):
            h = getattr(self, f"block{i}")(h)
        return self.head(h)


def build(input_dim: int, num_classes: int, width: int = 32, blocks: int = 2,
          seed: int = 0) -> ResidualMLP:
    """The factory a scenario names: ``[model] factory = "byo_example.model:build"``.

    fedcore passes ``input_dim``, ``num_classes`` and ``seed``; ``width`` and ``blocks`` come
    from the scenario's ``[model]`` table.
    """
    if width < 1 or blocks < 0:
        raise ValueError(f"width must be >= 1 and blocks >= 0, got {width}, {blocks}")
    return ResidualMLP(input_dim, num_classes, width, blocks, seed)
