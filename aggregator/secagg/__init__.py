"""The server side of secure aggregation (SecAgg+): settings, state machine, unmasking.

``SecAggConfig`` says how a run wants it; ``SecAggServer`` is the per-round state machine;
``round.run_secagg_round`` drives it over Flower's ``Grid`` (imported lazily by the round
loop, since it depends on ``aggregator.rounds``).
"""

from aggregator.secagg.config import SecAggConfig
from aggregator.secagg.server import SecAggServer

__all__ = ["SecAggConfig", "SecAggServer"]
