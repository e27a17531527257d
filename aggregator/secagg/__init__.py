"""The server side of secure aggregation (SecAgg+): settings, state machine, unmasking.

``SecAggConfig`` says how a run wants it; ``server.SecAggServer`` is the per-round state
machine; ``round.run_secagg_round`` drives it over Flower's ``Grid``. Both are imported by
the round loop only when a run uses secure aggregation (``round`` also depends on
``aggregator.rounds``), so a plain run does not load the protocol.
"""

from aggregator.secagg.config import SecAggConfig

__all__ = ["SecAggConfig"]
