"""How a run asks for secure aggregation: the ``[secagg]`` options of a scenario, per round.

n is the number of clients sampled for the round (``federation.clients_per_round``); k and t
default to ``fedcore.secagg.params.derive_params(n, dropout, corruption, ...)`` (see there for
the derivation) unless given. ``clip`` bounds each coordinate of a client's update (new local
minus global parameters) and ``max_weight`` the examples a client's weight may count, for the
fixed-point encoding (``fedcore.secagg.fixedpoint``). ``identities`` (the CA, and who may take
part) switches on the active-adversary checks: signed keys and the consistency check
(``aggregator.secagg.keybook``); devices that hold an identity require them.
``require_identities`` (the scenario's ``secagg.identities``) refuses to run a round without.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator.secagg.keybook import Identities
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.params import (
    DEFAULT_CORRECTNESS_BITS,
    DEFAULT_CORRUPTION,
    DEFAULT_DROPOUT,
    DEFAULT_SECURITY_BITS,
    SecAggParams,
    derive_params,
)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure-aggregation settings of a run (defaults are safe for any n >= 2)."""

    k: int | None = None
    t: int | None = None
    dropout: float = DEFAULT_DROPOUT
    corruption: float = DEFAULT_CORRUPTION
    security_bits: float = DEFAULT_SECURITY_BITS
    correctness_bits: float = DEFAULT_CORRECTNESS_BITS
    clip: float = 8.0
    max_weight: float = 1000.0
    require_identities: bool = False
    identities: Identities | None = field(default=None, compare=False, repr=False)

    def params_for(self, n: int, extra_dropout: float = 0.0) -> SecAggParams:
        """k and t for a round of ``n`` clients; ``extra_dropout`` more of them leave on
        purpose (over-selection: only the first masked inputs are summed)."""
        k = None if self.k is None else min(self.k, n - 1)
        t = None if self.t is None else min(self.t, n - 1)
        dropout = min(self.dropout + extra_dropout, 0.99)
        return derive_params(
            n, dropout, self.corruption, self.security_bits, self.correctness_bits, k, t
        )

    def encoding_for(self, n: int) -> FixedPoint:
        """The fixed-point encoding of a round of ``n`` clients."""
        return FixedPoint.for_round(n, self.clip, self.max_weight)
