"""The pieces a strategy is composed of, as typed protocols a user's own pieces implement.

A `Strategy` is ``Strategy(name, make_rule, server_opt, privacy=...)``: ``make_rule(size,
backend)`` gives a fresh `AggregationRule` each round, a `ServerOptimizer` turns the round's
aggregate into the next global model, and an optional `UpdateWrapper` (differential privacy)
scales each update and finishes the aggregate. Arrays are the backend's (numpy or CuPy, see
``aggregator.backend``). Anything with state implements ``state_dict``/``load_state_dict`` so
a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from aggregator.backend import Backend
from aggregator.updates import ClientUpdate

__all__ = [
    "AggregationRule",
    "RuleFactory",
    "ServerOptimizer",
    "SummableRule",
    "UpdateWrapper",
]


@runtime_checkable
class AggregationRule(Protocol):
    """Folds one round's accepted updates into one vector, in the dtype of the round's model
    (float32 or float64). ``chosen``, after ``result``: the indices (in ``add`` order) of the
    updates the result is made of (Krum's selection), None when it is made of all of them."""

    chosen: list[int] | None

    def bind_global(self, global_host: np.ndarray) -> None:
        """The round's global model on the host, before any ``add``: its dtype is the rule's."""

    def add(self, update: ClientUpdate, weight: float, scale: float = 1.0) -> None:
        """Fold in one update (``weight``: its example count, or any positive weight under
        ``FlowerStrategy``; ``scale``: DP clipping)."""

    def result(self, global_vector: Any) -> Any:
        """The round's aggregate (a backend array); ``AggregationError`` if there is none."""


@runtime_checkable
class SummableRule(AggregationRule, Protocol):
    """A rule whose result is the example-weighted mean of the local models, so a sum taken
    elsewhere can stand in for the individual updates (secure aggregation). The capability is
    the rule's to state: ``takes_sums`` may say no for a configuration (uniform weights)."""

    @property
    def takes_sums(self) -> bool:
        """Whether ``add_sum`` may be used instead of ``add``."""
        ...

    def add_sum(self, mean: Any, weight: float) -> None:
        """Take ``mean`` (backend array; ``weight`` examples behind it) as the round's result."""


class RuleFactory(Protocol):
    """``make_rule(size, backend)``: a fresh rule for a model of ``size`` parameters."""

    def __call__(self, size: int, backend: Backend) -> AggregationRule: ...


@runtime_checkable
class ServerOptimizer(Protocol):
    """Moves the global model towards the round's aggregate (FedAvg: replaces it)."""

    def step(self, global_vector: Any, aggregate: Any, round_number: int) -> Any:
        """The next global vector (a backend array)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """What carries across rounds, as named host arrays."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned."""


@runtime_checkable
class UpdateWrapper(Protocol):
    """Wraps the aggregation (e.g. differential privacy): scales updates, finishes the sum."""

    def scale(self, norm: float) -> float:
        """The factor applied to an update whose delta has L2 norm ``norm``."""

    def finish(self, aggregate: Any, backend: Backend) -> Any:
        """The aggregate after the round (e.g. plus noise)."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """What carries across rounds."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned."""
