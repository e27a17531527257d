"""One round's aggregation: validate, fold, finish, whatever collected the updates.

``RoundAggregation`` is made by ``Strategy.start_round``; the round offers it the decoded
updates (``offer_all``: norms judged by the strategy's guard, one pass for a plain streaming
mean) or a secure sum (``offer_sum``), then ``finish`` applies the wrapper and the server
optimizer and checks the new model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from aggregator.fold import delta_norm
from aggregator.strategies.protocols import SummableRule
from aggregator.strategies.rules import AggregationError, WeightedMean
from aggregator.updates import ClientUpdate, Rejected, check_model

if TYPE_CHECKING:  # the strategy makes its rounds' aggregations; named here for types only
    from aggregator.strategies.strategy import Strategy


class RoundAggregation:
    """One round: ``offer`` each decoded update (may raise ``Rejected``), then ``finish``."""

    def __init__(self, strategy: Strategy, global_vector: np.ndarray, round_number: int):
        self.strategy, self.round = strategy, round_number
        dtype = np.float64 if np.asarray(global_vector).dtype == np.float64 else np.float32
        self.global_host = np.ascontiguousarray(global_vector, dtype=dtype)
        backend = strategy.backend
        self.global_b = backend.asarray(self.global_host)
        self.rule = strategy.make_rule(self.global_host.size, backend)
        self.rule.bind_global(self.global_host)

    def offer(self, update: ClientUpdate, limit: float | None = None) -> None:
        """Validate the update's norm, clip it if private, fold it into the rule."""
        norm = delta_norm(update, self.global_host) if math.isnan(update.norm) else update.norm
        self.strategy.guard.check(norm, limit)
        privacy = self.strategy.privacy
        scale = privacy.scale(norm) if privacy is not None else 1.0
        self.rule.add(update, update.num_examples, scale)

    @property
    def one_pass(self) -> bool:
        """Norms can be taken while folding: a plain (not clipped) streaming mean on host."""
        rule, s = self.rule, self.strategy
        return (
            type(rule) is WeightedMean
            and s.privacy is None
            and s.backend.name == "numpy"
            and self.global_host.dtype == np.float32
        )

    def offer_all(self, updates: list[ClientUpdate]) -> list[str | None]:
        """Fold a round's updates in order and judge their norms (``NormGuard.judge``);
        return each update's rejection reason or None.

        With `one_pass`, each update is read once: its norm is taken while it is folded, and
        in the rare round where one is refused the round is folded again without it (from
        the updates, which are still in memory, by the same fold), so the result is exactly
        as if it had never been offered. Otherwise norms are taken first, then the good
        updates folded."""
        if not self.one_pass:
            return self._measure_then_fold(updates)
        norms = self.rule.add_measured(updates, self.global_host)
        reasons = self.strategy.guard.judge(norms)
        if any(r is not None for r in reasons):  # rare: fold again without the refused
            self.rule = self.strategy.make_rule(self.global_host.size, self.strategy.backend)
            self.rule.bind_global(self.global_host)
            kept = [u for u, reason in zip(updates, reasons, strict=True) if reason is None]
            judged = [u.norm for u in kept]  # kept: folded in other groups of four, the
            self.rule.add_measured(kept, self.global_host)  # compiled sums may round apart
            for update, norm in zip(kept, judged, strict=True):
                update.norm = norm
        return reasons

    def _measure_then_fold(self, updates: list[ClientUpdate]) -> list[str | None]:
        reasons: list[str | None] = []
        for update in updates:
            try:
                delta_norm(update, self.global_host)
                reasons.append(None)
            except Rejected as exc:
                reasons.append(str(exc))
        norms = [u.norm for u, r in zip(updates, reasons, strict=True) if r is None]
        limit = self.strategy.guard.limit(norms)
        for i, update in enumerate(updates):
            if reasons[i] is None:
                try:
                    self.offer(update, limit)
                except Rejected as exc:
                    reasons[i] = str(exc)
        return reasons

    def offer_sum(self, mean_update: np.ndarray, weight: float) -> None:
        """Take a secure sum in place of the updates: ``mean_update`` is the example-weighted
        mean of ``local - global`` (host), ``weight`` the examples behind it."""
        if not (isinstance(self.rule, SummableRule) and self.rule.takes_sums):
            raise AggregationError(f"strategy {self.strategy.name!r} cannot take a sum")
        with np.errstate(over="ignore", invalid="ignore"):
            local = (self.global_host.astype(np.float64) + mean_update).astype(
                self.global_host.dtype
            )
        self.rule.add_sum(self.strategy.backend.asarray(local), weight)

    def finish(self) -> np.ndarray:
        """The next global model (host, in the dtype of the round's model); ``AggregationError``
        if it is not finite (then nothing carries over: the caller keeps the previous model)."""
        s = self.strategy
        aggregate = self.rule.result(self.global_b)
        if s.privacy is not None:
            aggregate = s.privacy.finish(aggregate, s.backend)
        with np.errstate(over="ignore", invalid="ignore"):
            new = s.server_opt.step(self.global_b, aggregate, self.round)
            host = np.asarray(s.backend.to_numpy(new), dtype=self.global_host.dtype)
        try:
            check_model(host)
        except Rejected as exc:
            raise AggregationError(str(exc)) from None
        return host
