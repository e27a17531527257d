"""Collect: how a round gathers contributions (plain, compressed, SecAgg+), one interface.

``collector_for(config)`` picks the collector a run needs; the round loop
(``aggregator.rounds``) drives it and never looks inside.
"""

from aggregator.collect.base import (
    Collected,
    Collector,
    Contribution,
    Rejection,
    RoundPlan,
    SecureSum,
    client_seed,
    finish_round,
)
from aggregator.collect.replies import CompressedCollector, PlainCollector
from aggregator.round_types import FederationConfig


def collector_for(config: FederationConfig) -> Collector:
    """The collector of a run: SecAgg+ when configured, else by the update codec."""
    if config.secagg is not None:
        from aggregator.collect.secagg import SecAggCollector  # the protocol only when used

        return SecAggCollector(config.secagg)
    if config.train.compression != "none":
        return CompressedCollector(config.train.compression, config.train.compression_options)
    return PlainCollector()


__all__ = [
    "Collected",
    "Collector",
    "CompressedCollector",
    "Contribution",
    "PlainCollector",
    "Rejection",
    "RoundPlan",
    "SecureSum",
    "client_seed",
    "finish_round",
    "collector_for",
]
