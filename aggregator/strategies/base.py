"""A strategy = an aggregation rule x a server optimizer, looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aggregator.strategies.rules import WeightedMean
from aggregator.strategies.server_opt import PlainStep


@dataclass(frozen=True)
class Strategy:
    """How one round's accepted updates become the next global model."""

    name: str
    make_rule: Callable[[int], WeightedMean]
    server_opt: PlainStep


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "fedavg": lambda: Strategy("fedavg", WeightedMean, PlainStep()),
}


def known_strategies() -> tuple[str, ...]:
    """Names accepted by ``build_strategy``."""
    return tuple(sorted(STRATEGIES))


def build_strategy(name: str) -> Strategy:
    """Return a fresh strategy by name; unknown names list the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(known_strategies())}")
    return STRATEGIES[name]()
