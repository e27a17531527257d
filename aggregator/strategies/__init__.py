"""Strategies as composition: an aggregation rule x a server optimizer x wrappers.

``strategy.py`` holds the composition (``Strategy``), ``aggregation.py`` one round of it
(``RoundAggregation``), ``registry.py`` names and options, and ``builtin.py`` the named
strategies, a few lines each. FedAvg is the weighted mean with the plain
server step; the FedOpt family, robust rules, q-FedAvg and differential privacy plug into the
same slots. A user's own strategy is ``register(name, defaults, doc)`` on a builder, a
``package.module:make`` reference or a ``fedcore.strategies`` entry point; its pieces implement
the protocols of ``protocols.py``.
"""

from aggregator.strategies import builtin  # noqa: F401 - registers the named strategies
from aggregator.strategies.aggregation import RoundAggregation
from aggregator.strategies.protocols import (
    AggregationRule,
    RuleFactory,
    ServerOptimizer,
    UpdateWrapper,
)
from aggregator.strategies.registry import (
    STRATEGIES,
    StrategySpec,
    build_strategy,
    flower_options,
    known_strategies,
    register,
    strategy_options,
    strategy_spec,
)
from aggregator.strategies.rules import AggregationError, QFedAvg, WeightedMean
from aggregator.strategies.server_opt import AdaptiveStep, MomentumStep, PlainStep
from aggregator.strategies.strategy import Strategy, StrategyContext

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
