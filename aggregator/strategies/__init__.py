"""Strategies as composition: an aggregation rule x a server optimizer x wrappers.

A named strategy is a few lines in ``base.py``. FedAvg is the weighted mean with the plain
server step; the FedOpt family, robust rules, q-FedAvg and differential privacy plug into the
same slots. A user's own strategy is ``register(name, defaults, doc)`` on a builder, a
``package.module:make`` reference or a ``fedcore.strategies`` entry point; its pieces implement
the protocols of ``protocols.py``.
"""

from aggregator.strategies.base import (
    STRATEGIES,
    RoundAggregation,
    Strategy,
    StrategyContext,
    StrategySpec,
    build_strategy,
    flower_options,
    known_strategies,
    register,
    strategy_options,
    strategy_spec,
)
from aggregator.strategies.protocols import (
    AggregationRule,
    RuleFactory,
    ServerOptimizer,
    UpdateWrapper,
)
from aggregator.strategies.rules import AggregationError, QFedAvg, WeightedMean
from aggregator.strategies.server_opt import AdaptiveStep, MomentumStep, PlainStep

__all__ = [
    "STRATEGIES",
    "AdaptiveStep",
    "AggregationError",
    "AggregationRule",
    "MomentumStep",
    "PlainStep",
    "QFedAvg",
    "RoundAggregation",
    "RuleFactory",
    "ServerOptimizer",
    "Strategy",
    "StrategyContext",
    "StrategySpec",
    "UpdateWrapper",
    "WeightedMean",
    "build_strategy",
    "flower_options",
    "known_strategies",
    "register",
    "strategy_options",
    "strategy_spec",
]
