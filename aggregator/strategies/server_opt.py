"""Server optimizers: how the round's aggregate moves the global model.

Each ``step(global, aggregate, round)`` returns the next global vector (backend arrays). The
FedOpt family (Reddi et al., 2021) follows Flower's ``FedAdam``/``FedYogi``/``FedAdagrad``
update rules exactly, bias correction included, so both give the same models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import namespace_of


def _host(array: Any) -> np.ndarray:
    """A backend array as host numpy (CuPy arrays have ``.get()``)."""
    return np.asarray(array.get() if hasattr(array, "get") else array)


def _like(reference: Any, host: Any) -> Any:
    """``host`` on the same backend as ``reference``."""
    return namespace_of(reference).asarray(host)


class PlainStep:
    """FedAvg's server step: the aggregate becomes the new global model."""

    def step(self, global_vector: Any, aggregate: Any, round_number: int) -> Any:
        """Return the next global vector."""
        return aggregate

    def state_dict(self) -> dict[str, np.ndarray]:
        """No state: FedAvg's step is memoryless."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Nothing to restore."""


@dataclass
class MomentumStep:
    """FedAvgM: SGD with momentum on the pseudo-gradient ``global - aggregate``."""

    server_learning_rate: float = 1.0
    server_momentum: float = 0.9
    _buffer: Any = field(default=None, repr=False)

    def step(self, global_vector: Any, aggregate: Any, round_number: int) -> Any:
        """Return ``global - lr * m`` with ``m = momentum * m + (global - aggregate)``."""
        if self.server_momentum == 0.0 and self.server_learning_rate == 1.0:
            return aggregate
        grad = global_vector - aggregate
        if self._buffer is not None:
            self._buffer = _like(grad, self._buffer)  # a restored host buffer, on this backend
        if self.server_momentum > 0.0:
            self._buffer = (
                grad if self._buffer is None else self.server_momentum * (self._buffer) + grad
            )
            grad = self._buffer
        return global_vector - self.server_learning_rate * grad

    def state_dict(self) -> dict[str, np.ndarray]:
        """The momentum buffer (host copy), for checkpoints."""
        return {} if self._buffer is None else {"buffer": _host(self._buffer)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the momentum buffer from a checkpoint."""
        self._buffer = state["buffer"] if "buffer" in state else None


@dataclass
class AdaptiveStep:
    """FedOpt with ``kind`` adam, yogi or adagrad on the delta ``aggregate - global``."""

    kind: str
    eta: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    _m: Any = field(default=None, repr=False)
    _v: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("adam", "yogi", "adagrad"):
            raise ValueError(f"unknown adaptive optimizer {self.kind!r}")
        if self.kind == "adagrad":
            self.beta_1 = self.beta_2 = 0.0

    def step(self, global_vector: Any, aggregate: Any, round_number: int) -> Any:
        """Return ``global + eta * m / (sqrt(v) + tau)`` (Adam: eta bias-corrected)."""
        xp = namespace_of(global_vector)
        delta = aggregate - global_vector
        m = xp.asarray(self._m) if self._m is not None else xp.zeros_like(delta)
        self._m = self.beta_1 * m + (1 - self.beta_1) * delta
        square = delta * delta
        v = xp.asarray(self._v) if self._v is not None else xp.zeros_like(delta)
        if self.kind == "adam":
            self._v = self.beta_2 * v + (1 - self.beta_2) * square
        elif self.kind == "yogi":
            self._v = v - (1.0 - self.beta_2) * square * xp.sign(v - square)
        else:
            self._v = v + square
        eta = self.eta
        if self.kind == "adam":  # Flower's bias correction counts from round + 1
            t = round_number + 1.0
            eta = self.eta * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        return global_vector + eta * self._m / (xp.sqrt(self._v) + self.tau)

    def state_dict(self) -> dict[str, np.ndarray]:
        """First and second moments (host copies), for checkpoints."""
        if self._m is None:
            return {}
        return {"m": _host(self._m), "v": _host(self._v)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the moments from a checkpoint."""
        self._m = state.get("m")
        self._v = state.get("v")
