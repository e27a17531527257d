"""What an asynchronous run is configured with (``AsyncConfig``) and how a stale contribution
counts: FedBuff's weight ``w(s)`` (``Staleness``) and the re-basing of an update onto whatever
model it meets (``rebase``). The run itself is ``aggregator.asynchronous``."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from aggregator.updates import ClientUpdate


@dataclass(frozen=True)
class Staleness:
    """How much a contribution ``s`` server steps old counts (FedBuff's ``w(s)``).

    ``constant``: 1; ``polynomial``: ``(1 + s) ** -exponent``; ``hinge``: 1 up to ``hinge``
    steps, then ``1 / (exponent * (s - hinge) + 1)``.
    """

    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    exponent: float = 0.5
    hinge: int = 10

    def weight(self, staleness: int) -> float:
        """The factor on a contribution of this staleness (1.0 when fresh)."""
        if self.kind == "constant" or staleness <= 0:
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.exponent)
        if staleness <= self.hinge:
            return 1.0
        return 1.0 / (self.exponent * (staleness - self.hinge) + 1.0)


@dataclass(frozen=True)
class AsyncConfig:
    """``concurrency`` clients train at once; a server step every ``buffer`` contributions;
    contributions older than ``max_staleness`` steps are rejected (None: never)."""

    concurrency: int
    buffer: int
    staleness: Staleness = Staleness()
    max_staleness: int | None = None


def rebase(update: ClientUpdate, base: np.ndarray, weight: float) -> ClientUpdate:
    """``update`` (trained from ``base``) as a weighted delta to whatever model it meets."""
    if update.values is not None:
        delta = update.values.astype(np.float32) - base
    elif update.delta is not None:
        delta = np.array(update.delta, dtype=np.float32)
    else:
        assert update.sparse is not None
        delta = np.zeros_like(base)
        indices, values = update.sparse
        delta[indices] = values
    delta *= np.float32(weight)
    return replace(update, values=None, delta=delta, sparse=None, norm=math.nan)
