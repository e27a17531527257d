"""The example's strategy: the weighted mean, then a damped server step with momentum."""

from __future__ import annotations

from typing import Any

import numpy as np

from aggregator.strategies import Strategy, StrategyContext, WeightedMean


class DampedMomentum:
    """A `ServerOptimizer`: ``v = momentum * v + (aggregate - global)``, ``global += lr * v``."""

    def __init__(self, server_lr: float, momentum: float) -> None:
        self.server_lr, self.momentum = server_lr, momentum
        self.velocity: np.ndarray | None = None

    def step(self, global_vector: Any, aggregate: Any, round_number: int) -> Any:
        delta = np.asarray(aggregate) - np.asarray(global_vector)
        self.velocity = delta if self.velocity is None else self.momentum * self.velocity + delta
        return np.asarray(global_vector) + np.float32(self.server_lr) * self.velocity

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.velocity is None else {"velocity": self.velocity}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = state.get("velocity")


def make(server_lr: float = 1.0, momentum: float = 0.5,
         context: StrategyContext | None = None) -> Strategy:
    """``strategy = "byo_example.strategy:make"``; its options come from
    ``[federation.strategy_options]`` (``server_lr``, ``momentum``)."""
    return Strategy("damped-momentum", WeightedMean, DampedMomentum(server_lr, momentum))
