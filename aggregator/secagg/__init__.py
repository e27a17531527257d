"""The server side of secure aggregation (SecAgg+): settings, state machine, unmasking.

``SecAggConfig`` says how a run wants it; ``server.SecAggServer`` is the per-round state
machine; ``aggregator.collect.secagg.SecAggCollector`` drives it over Flower's ``Grid`` (one of
the round's collectors). The protocol is imported only when a run uses secure aggregation.
"""

from aggregator.secagg.config import SecAggConfig

__all__ = ["SecAggConfig"]
