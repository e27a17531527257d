"""The norm guard: refuse an update far larger than the federation's usual ones.

An update's size is its distance to the global model, ``||local - global||`` (taken while it
is folded, ``aggregator.fold``). The limit is ``factor`` times the median of the norms of
recently accepted updates of earlier rounds; the first round is judged with its own norms.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from aggregator.updates import Rejected


class NormGuard:
    """Reject updates far larger than usual: ``norm > factor * median`` of recent norms.

    The limit of a round comes from earlier rounds: the median of the last ``window``
    accepted norms (zero norms, an update equal to the global model, tell nothing of the
    scale and are left out). The first round (fewer than ``min_history`` earlier norms) is
    judged against its own norms together with those, so it is protected too; with fewer
    than ``min_history`` norms in all nothing is refused for its size. A round's accepted
    norms join the history when the whole round has been judged (``judge``), so the limit
    never depends on arrival order. ``factor <= 0`` switches the check off; the default (30)
    is above what honest runs of the shipped scenarios reach (at most 13 x in 100 rounds,
    ``tests/aggregator/test_guard_long_runs.py``).
    """

    def __init__(self, factor: float = 30.0, window: int = 100, min_history: int = 3) -> None:
        self.factor = factor
        self.min_history = min_history
        self.norms: deque[float] = deque(maxlen=window)

    def median(self, round_norms: Iterable[float] = ()) -> float:
        """The median the limit is a multiple of: of the recent accepted (positive) norms of
        earlier rounds; while those are fewer than ``min_history`` (the first round), of
        them and this round's finite ``round_norms`` together. NaN when there are too few."""
        pool = [n for n in self.norms if n > 0]
        if len(pool) < self.min_history:
            pool += [n for n in round_norms if 0 < n < math.inf]
        return float(np.median(pool)) if len(pool) >= self.min_history else math.nan

    def limit(self, round_norms: Iterable[float] = ()) -> float:
        """The largest acceptable norm: ``factor`` x ``median(round_norms)``; inf when the
        guard is off or has too few norms to judge by."""
        median = self.median(round_norms)
        if self.factor <= 0 or math.isnan(median):
            return math.inf
        return self.factor * median

    def judge(self, norms: list[float]) -> list[str | None]:
        """Why each of a round's updates (by its norm) is refused, or None; the accepted
        norms join the history once the whole round is judged (so the limit within a round
        does not depend on arrival order)."""
        limit = self.limit(norms)
        reasons = [self.reason(norm, limit) for norm in norms]
        self.norms.extend(n for n, r in zip(norms, reasons, strict=True) if r is None)
        return reasons

    def reason(self, norm: float, limit: float) -> str | None:
        """Why an update of ``norm`` is refused under ``limit``, with the real numbers (the
        norm, the limit, the factor and the median it comes from); None if it is not."""
        if math.isnan(norm):
            return "non-finite values (NaN or inf)"
        if math.isinf(norm):
            return "update norm overflows (oversized values)"
        if norm <= limit:
            return None
        return (
            f"update norm {norm:.4g} exceeds the limit {limit:.4g} "
            f"({self.factor:g} x the median norm {limit / self.factor:.4g} of recent updates)"
        )

    def check(self, norm: float, limit: float | None = None) -> None:
        """Raise ``Rejected`` if ``norm`` is refused under ``limit`` (default: from history
        alone); otherwise remember it."""
        why = self.reason(norm, self.limit() if limit is None else limit)
        if why is not None:
            raise Rejected(why)
        self.norms.append(norm)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Recent accepted norms, for checkpoints (the threshold depends on them)."""
        return {"norms": np.asarray(self.norms, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the recent norms from a checkpoint."""
        self.norms.clear()
        self.norms.extend(float(n) for n in state.get("norms", ()))
