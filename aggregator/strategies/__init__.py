"""Strategies as composition: an aggregation rule followed by a server optimizer step.

A named strategy is one line in ``STRATEGIES``. FedAvg is the weighted mean with the plain
server step; the FedOpt family and robust rules plug into the same two slots.
"""

from aggregator.strategies.base import Strategy, build_strategy, known_strategies
from aggregator.strategies.rules import WeightedMean
from aggregator.strategies.server_opt import PlainStep

__all__ = ["PlainStep", "Strategy", "WeightedMean", "build_strategy", "known_strategies"]
