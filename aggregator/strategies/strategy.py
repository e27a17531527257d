"""A strategy = an aggregation rule x a server optimizer x wrappers, and what it depends on.

``Strategy`` is the composition; its rule is made fresh each round (``start_round`` gives the
round's ``RoundAggregation``), its server optimizer, norm guard and privacy wrapper carry
across rounds and checkpoint with ``state_dict``. Named strategies are built by
``registry.build_strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import Backend, select_backend
from aggregator.guard import NormGuard
from aggregator.strategies.aggregation import RoundAggregation
from aggregator.strategies.privacy import DifferentialPrivacy
from aggregator.strategies.protocols import RuleFactory, ServerOptimizer, SummableRule
from aggregator.strategies.server_opt import PlainStep


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may depend on besides its options."""

    num_clients: int = 10
    clients_per_round: int = 10
    seed: int = 0
    backend: Backend | None = None


@dataclass
class Strategy:
    """How one round's accepted updates become the next global model."""

    name: str
    make_rule: RuleFactory
    server_opt: ServerOptimizer = field(default_factory=PlainStep)
    backend: Backend = field(default_factory=select_backend)
    guard: NormGuard = field(default_factory=NormGuard)
    privacy: DifferentialPrivacy | None = None
    client_options: dict[str, Any] = field(default_factory=dict)  # sent with instructions

    def start_round(self, global_vector: np.ndarray, round_number: int) -> RoundAggregation:
        """A fresh aggregation for one round around ``global_vector`` (host, float32 or
        float64: the rule accumulates and answers in that dtype)."""
        return RoundAggregation(self, global_vector, round_number)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything that carries across rounds (server optimizer, norm history, privacy),
        as named host arrays for a checkpoint."""
        state: dict[str, np.ndarray] = {}
        for prefix, part in self._stateful_parts():
            state.update({f"{prefix}.{k}": v for k, v in part.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` saved, so a resumed run continues bit for bit."""
        for prefix, part in self._stateful_parts():
            head = prefix + "."
            part.load_state_dict(
                {k.removeprefix(head): v for k, v in state.items() if k.startswith(head)}
            )

    def _stateful_parts(self) -> list[tuple[str, Any]]:
        parts = [("opt", self.server_opt), ("guard", self.guard), ("dp", self.privacy)]
        return [(p, part) for p, part in parts if part is not None]

    @property
    def takes_sums(self) -> bool:
        """Whether a sum of the updates (SecAgg+) can stand in for them: the rule says so
        (`SummableRule`), and no wrapper needs each update (DP clips each one)."""
        rule = self.make_rule(1, self.backend)
        return isinstance(rule, SummableRule) and rule.takes_sums and self.privacy is None

    def privacy_spent(self) -> float | None:
        """Epsilon spent so far (None without differential privacy)."""
        return self.privacy.spent() if self.privacy is not None else None
