"""Strategies as composition: an aggregation rule x a server optimizer x wrappers.

A named strategy is a few lines in ``base.py``. FedAvg is the weighted mean with the plain
server step; the FedOpt family, robust rules, q-FedAvg and differential privacy plug into the
same slots.
"""

from aggregator.strategies.base import (
    STRATEGIES,
    RoundAggregation,
    Strategy,
    StrategyContext,
    build_strategy,
    known_strategies,
    strategy_options,
)
from aggregator.strategies.rules import AggregationError, QFedAvg, WeightedMean
from aggregator.strategies.server_opt import AdaptiveStep, MomentumStep, PlainStep

__all__ = [
    "STRATEGIES",
    "AdaptiveStep",
    "AggregationError",
    "MomentumStep",
    "PlainStep",
    "QFedAvg",
    "RoundAggregation",
    "Strategy",
    "StrategyContext",
    "WeightedMean",
    "build_strategy",
    "known_strategies",
    "strategy_options",
]
