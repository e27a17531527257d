"""The strategies compared with Flower's own, with the same hyperparameters on both sides: the
one table of both parity suites (``test_parity``: our composition on hand-built replies;
``test_flower_strategy_parity``: ``FlowerStrategy``, property-based)."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.serverapp import strategy as fl

from aggregator.strategies.registry import STRATEGIES

# name -> our options; Flower's strategy is the one the registry names (``StrategySpec.flower``)
OPTIONS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": 0.3},
    "fedavgm": {"server_learning_rate": 0.7, "server_momentum": 0.9},
    "fedadam": {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
    "fedyogi": {"eta": 0.05, "tau": 1e-2},
    "fedadagrad": {"eta": 0.05, "tau": 1e-2},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.2},
    "krum": {"num_malicious": 1},
    "multikrum": {"num_malicious": 1, "select": 3},
    "bulyan": {"num_malicious": 1},
    "qfedavg": {"q": 0.2, "client_learning_rate": 0.1},
}
# our option -> Flower's keyword for it, where the names differ
FLOWER_KEYWORDS = {"num_malicious": "num_malicious_nodes", "select": "num_nodes_to_select"}
# Flower's own arithmetic takes 10-25 s a case on 2 busy cores here: the slow subset
LONG = ("qfedavg", "bulyan")


def flower_strategy(name: str, **extra: Any) -> fl.Strategy:
    """Flower's strategy of the same rule as ours, with ``OPTIONS[name]`` (and ``extra``)."""
    options = {FLOWER_KEYWORDS.get(k, k): v for k, v in OPTIONS[name].items()}
    return getattr(fl, STRATEGIES[name].flower)(**options, **extra)


def case_names() -> list[Any]:
    """Every case for ``pytest.mark.parametrize``, the long ones marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in LONG else n for n in sorted(OPTIONS)]
