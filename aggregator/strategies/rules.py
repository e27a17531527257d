"""Aggregation rules: how accepted client vectors become one vector.

Rules are streaming accumulators: ``add`` folds in one update as it arrives, so the server holds
one model's worth of state whatever the number of clients.
"""

from __future__ import annotations

import numpy as np


class WeightedMean:
    """Running weighted sum of client vectors (weights = examples), in float64 for stability."""

    def __init__(self, size: int) -> None:
        self._sum = np.zeros(size, dtype=np.float64)
        self._weight = 0.0

    def add(self, vector: np.ndarray, weight: float) -> None:
        """Fold in one update with weight ``weight`` (> 0)."""
        if weight <= 0:
            raise ValueError(f"update weight must be positive, got {weight}")
        self._sum += weight * vector.astype(np.float64, copy=False)
        self._weight += weight

    @property
    def count_weight(self) -> float:
        """Total weight folded in so far."""
        return self._weight

    def result(self) -> np.ndarray:
        """The weighted mean as float32; raises if nothing was added."""
        if self._weight == 0:
            raise ValueError("no update was accepted this round")
        return (self._sum / self._weight).astype(np.float32)
