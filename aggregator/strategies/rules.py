"""Aggregation rules: how one round's accepted updates become one vector.

Streaming rules (``WeightedMean``, ``QFedAvg``) fold each update in as it arrives and hold one
model's worth of state on the backend whatever the number of clients. Robust rules
(``robust.py``) need every update at once and keep them on the backend, reduced in column
chunks. Every rule: ``bind_global(global)`` (the round's model on the host: it sets the dtype,
float32 or float64, that the rule accumulates and answers in), ``add(update, weight, scale)``
for each update, then ``result(global)``; ``scale`` shrinks the update's delta to the global
model (differential-privacy clipping). After ``result``, ``chosen`` lists the indices (in
``add`` order) of the updates the result is made of, or is None when it is made of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aggregator.backend import Backend
from aggregator.fold import fold_measured
from aggregator.updates import ClientUpdate, Rejected


class AggregationError(ValueError):
    """A rule cannot produce a result from what it was given."""


class WeightedMean:
    """Running ``sum(w * local) / sum(w)`` in the model's dtype, one fused multiply-add per
    update.

    With example weights it takes a sum in place of the updates (``add_sum``, a
    `SummableRule`): secure aggregation hands it the mean it decoded.
    """

    streaming = True
    chosen: list[int] | None = None  # every update counts

    def __init__(self, size: int, backend: Backend, uniform: bool = False) -> None:
        self.backend = backend
        self.uniform = uniform
        self._dtype = np.dtype(np.float32)  # of the accumulator (a host dtype on any backend)
        self._acc = backend.zeros(size, self._dtype)
        self._weight = 0.0
        self._global_coef = 0.0  # compressed deltas and clipping leave the global part out
        self._summed: Any = None  # a mean taken elsewhere (``add_sum``)
        self.count = 0

    @property
    def takes_sums(self) -> bool:
        """A sum of example-weighted updates can stand in for them (not with uniform weights:
        a secure sum is weighted by examples)."""
        return not self.uniform

    def add_sum(self, mean: Any, weight: float) -> None:
        """Take ``mean`` (a backend array: the example-weighted mean of the local models,
        ``weight`` examples behind it) as the round's result."""
        if not self.takes_sums or self.count or self._summed is not None:
            raise AggregationError("this mean cannot take a sum (uniform, or not empty)")
        self._summed, self._weight = mean, float(weight)

    def bind_global(self, global_host: np.ndarray) -> None:
        """Accumulate in the dtype of the round's model (float32 unless it is float64)."""
        if global_host.dtype != self._dtype:
            self._dtype = global_host.dtype
            self._acc = self.backend.zeros(global_host.size, self._dtype)

    def _weight_of(self, weight: float) -> float:
        """An update's weight: 1 when ``uniform``, else ``weight`` (which must be > 0)."""
        weight = 1.0 if self.uniform else float(weight)
        if weight <= 0:
            raise ValueError(f"update weight must be positive, got {weight}")
        return weight

    def add(self, update: ClientUpdate, weight: float, scale: float = 1.0) -> None:
        """Fold in one update with weight ``weight`` (> 0; 1 when ``uniform``)."""
        weight = self._weight_of(weight)
        self._global_coef += update.fold(self.backend, self._acc, weight, scale)
        self._weight += weight
        self.count += 1

    def add_measured(self, updates: Sequence[ClientUpdate], global_host: np.ndarray) -> list[float]:
        """``add`` each update (no clipping) while measuring its norm in the same pass over
        it (numpy backend, ``aggregator.fold``): return the norms, NaN/inf for an update that
        is not finite (no ``add`` can be undone: fold the round again without it)."""
        weights = [self._weight_of(u.num_examples) for u in updates]
        coefs = fold_measured(self._acc, updates, weights, global_host, self.backend)
        for weight, coef in zip(weights, coefs, strict=True):
            self._global_coef += coef
            self._weight += weight
            self.count += 1
        return [u.norm for u in updates]

    @property
    def count_weight(self) -> float:
        """Total weight folded in so far."""
        return self._weight

    def result(self, global_vector: Any) -> Any:
        """The weighted mean (the model's dtype, on the backend); raises if nothing was added."""
        if self._weight == 0:
            raise AggregationError("no update was accepted this round")
        if self._summed is not None:
            return self._summed
        out = self._acc
        if self._global_coef:
            out = out + self.backend.xp.asarray(self._global_coef, dtype=out.dtype) * (
                global_vector
            )
        return out / self.backend.xp.asarray(self._weight, dtype=out.dtype)


class QFedAvg:
    """q-FedAvg (Li et al., 2020), streamed: clients with a higher loss weigh more.

    With ``L = 1 / client_learning_rate`` and ``d_k = L (global - local_k)``:
    ``next = global - sum(loss_k^q d_k) / sum(q loss_k^(q-1) |d_k|^2 + L loss_k^q)``,
    as Flower's ``QFedAvg``. The result is the next model (use the plain server step).
    """

    streaming = True
    chosen: list[int] | None = None

    def __init__(self, size: int, backend: Backend, q: float = 0.1, client_lr: float = 0.1):
        if client_lr <= 0:
            raise ValueError(f"client_learning_rate must be > 0, got {client_lr}")
        self.q, self.lipschitz = float(q), 1.0 / float(client_lr)
        self._sum = WeightedMean(size, backend)
        self._h = 0.0
        self.count = 0

    def bind_global(self, global_host: np.ndarray) -> None:
        """Accumulate in the dtype of the round's model."""
        self._sum.bind_global(global_host)

    def add(self, update: ClientUpdate, weight: float, scale: float = 1.0) -> None:
        """Fold in one update; its weight comes from its loss, not its examples (a loss that is
        not a finite non-negative number is ``Rejected``: it would weigh NaN or inf)."""
        if not (math.isfinite(update.train_loss) and update.train_loss >= 0):
            raise Rejected(f"q-FedAvg needs a finite loss >= 0, got {update.train_loss}")
        loss = update.train_loss + 1e-10
        lq = float(np.float_power(loss, self.q))
        norm2 = (self.lipschitz * scale * update.norm) ** 2
        self._h += self.q * float(np.float_power(loss, self.q - 1)) * norm2 + self.lipschitz * lq
        self._sum.add(update, lq, scale)
        self.count += 1

    def result(self, global_vector: Any) -> Any:
        """``global - L (W global - sum(w_k local_k)) / h`` with ``w_k = loss_k^q``."""
        if self.count == 0:
            raise AggregationError("no update was accepted this round")
        xp = self._sum.backend.xp
        weight = self._sum.count_weight
        mean = self._sum.result(global_vector)  # sum(w_k local_k) / W
        step = xp.asarray(self.lipschitz * weight / self._h, dtype=global_vector.dtype)
        return global_vector - step * (global_vector - mean)
