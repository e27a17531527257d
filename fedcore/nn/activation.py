"""Activation and regularisation layers: GELU, Tanh, Sigmoid, Softmax, Dropout."""

from __future__ import annotations

import numpy as np

from ..engine import Tensor, dropout, gelu, sigmoid, softmax, tanh
from ..engine.ops import Operand
from .module import Module

__all__ = ["GELU", "Dropout", "Sigmoid", "Softmax", "Tanh"]


class GELU(Module):
    """Gaussian error linear unit, tanh approximation."""

    per_sample = True

    def forward(self, x: Operand) -> Tensor:
        """Apply GELU elementwise."""
        return gelu(x)


class Tanh(Module):
    """Hyperbolic tangent."""

    per_sample = True

    def forward(self, x: Operand) -> Tensor:
        """Apply tanh elementwise."""
        return tanh(x)


class Sigmoid(Module):
    """Logistic function."""

    per_sample = True

    def forward(self, x: Operand) -> Tensor:
        """Apply the sigmoid elementwise."""
        return sigmoid(x)


class Softmax(Module):
    """Softmax along `axis` (for probabilities; train on logits with softmax_cross_entropy)."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def forward(self, x: Operand) -> Tensor:
        """Normalise `x` into probabilities along the axis."""
        return softmax(x, self.axis)


class Dropout(Module):
    """Inverted dropout with its own seeded generator; the identity in eval mode.

    The generator advances on every training forward, so two layers built with the same seed
    produce the same masks in the same order (reproducible federated clients).
    """

    def __init__(self, p: float = 0.5, seed: int | None = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    @property
    def per_sample(self) -> bool:  # type: ignore[override]
        """Unless it draws masks (training with p > 0): shards would draw them in another
        order than the whole batch, from one generator shared by threads."""
        return not self.training or self.p == 0.0

    def forward(self, x: Operand) -> Tensor:
        """Drop elements at random in training mode; pass `x` through in eval mode."""
        return dropout(x, self.p, self.rng, training=self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
