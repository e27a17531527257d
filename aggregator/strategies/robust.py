"""Robust aggregation rules: coordinate median, trimmed mean, (Multi-)Krum and Bulyan.

They need every accepted update at once. The updates stay on the backend (on numpy: views of
the message bytes, no copy) and every reduction runs over column chunks of ``chunk``
parameters, so the temporaries are ``n x chunk``, never ``n x size``. Semantics follow
Flower's ``FedMedian``, ``FedTrimmedAvg``, ``Krum``, ``MultiKrum`` and ``Bulyan``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aggregator.backend import Backend
from aggregator.strategies.rules import AggregationError
from aggregator.updates import ClientUpdate

CHUNK = 1 << 16


class _Stacked:
    """Collects full local vectors on the backend; subclasses reduce them chunk by chunk."""

    streaming = False

    def __init__(self, size: int, backend: Backend, chunk: int = CHUNK) -> None:
        self.size, self.backend, self.chunk = size, backend, chunk
        self.rows: list[Any] = []
        self.weights: list[float] = []
        self.chosen: list[int] | None = None  # set by a selecting rule's ``result``
        self._global_host: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Updates collected so far."""
        return len(self.rows)

    def bind_global(self, global_host: np.ndarray) -> None:
        """The round's global model on the host (to rebuild vectors sent as deltas); its
        dtype is the rule's."""
        self._global_host = global_host

    def add(self, update: ClientUpdate, weight: float, scale: float = 1.0) -> None:
        """Keep this update's full vector (its delta scaled by ``scale``) on the backend."""
        assert self._global_host is not None, "bind_global() first"
        full = update.full(self._global_host)
        if scale != 1.0:
            g = self._global_host
            full = g + g.dtype.type(scale) * (full - g)
        self.rows.append(self.backend.asarray(full))
        self.weights.append(float(weight))

    def _chunks(self, rows: list[Any]):  # noqa: ANN202 - yields (lo, hi, n x chunk array)
        xp = self.backend.xp
        for lo in range(0, self.size, self.chunk):
            hi = min(lo + self.chunk, self.size)
            yield lo, hi, xp.stack([r[lo:hi] for r in rows])

    def _reduce(self, rows: list[Any], fn) -> Any:  # noqa: ANN001 - chunk -> reduced chunk
        if not rows:
            raise AggregationError("no update was accepted this round")
        xp = self.backend.xp
        return xp.concat([fn(block) for _, _, block in self._chunks(rows)])

    def _median(self, block: Any) -> Any:
        xp = self.backend.xp
        ordered = xp.sort(block, axis=0)
        n = ordered.shape[0]
        if n % 2:
            return ordered[n // 2, ...]
        return (ordered[n // 2 - 1, ...] + ordered[n // 2, ...]) / 2


class CoordinateMedian(_Stacked):
    """The coordinate-wise median (unweighted)."""

    def result(self, global_vector: Any) -> Any:
        """Median of each coordinate over the accepted updates."""
        return self._reduce(self.rows, self._median)


class TrimmedMean(_Stacked):
    """Coordinate-wise mean after cutting the ``beta`` fraction at both ends (unweighted)."""

    def __init__(self, size: int, backend: Backend, beta: float = 0.2, **kw: Any) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        super().__init__(size, backend, **kw)
        self.beta = beta

    def result(self, global_vector: Any) -> Any:
        """Trimmed mean of each coordinate."""
        xp = self.backend.xp
        n = len(self.rows)
        cut = int(self.beta * n)

        def trim(block: Any) -> Any:
            return xp.mean(xp.sort(block, axis=0)[cut : n - cut, ...], axis=0)

        return self._reduce(self.rows, trim)


class MultiKrum(_Stacked):
    """Krum (``select=1``) / Multi-Krum: weighted mean of the ``select`` updates whose
    ``n - f - 2`` nearest neighbours are closest (``f = num_malicious``)."""

    def __init__(
        self, size: int, backend: Backend, num_malicious: int = 0, select: int = 1, **kw: Any
    ) -> None:
        super().__init__(size, backend, **kw)
        self.num_malicious, self.select = int(num_malicious), int(select)

    def distances(self) -> np.ndarray:
        """Squared L2 distances between all accepted updates (float64, host, n x n)."""
        xp = self.backend.xp
        n = len(self.rows)
        gram = xp.zeros((n, n), dtype=xp.float64)
        for _, _, block in self._chunks(self.rows):
            b = xp.astype(block, xp.float64)
            gram = gram + b @ b.T
        g = self.backend.to_numpy(gram)
        norms = np.diag(g)
        return norms[:, None] + norms[None, :] - 2 * g

    def selected(self, select: int) -> list[int]:
        """Indices of the ``select`` lowest Krum scores (as Flower's ``select_multikrum``)."""
        if not self.rows:
            raise AggregationError("no update was accepted this round")
        dist = self.distances()
        closest = max(1, len(self.rows) - self.num_malicious - 2)
        scores = [float(np.sum(row[np.argsort(row)[1 : closest + 1]])) for row in dist]
        return [int(i) for i in np.argsort(scores)[:select]]

    def result(self, global_vector: Any) -> Any:
        """Weighted mean of the selected updates."""
        chosen = self.chosen = self.selected(self.select)
        total = sum(self.weights[i] for i in chosen)
        out = self.backend.zeros(self.size, self._global_host.dtype)
        for i in chosen:
            self.backend.axpy(out, self.weights[i] / total, self.rows[i])
        return out


class Bulyan(MultiKrum):
    """Bulyan (El Mhamdi et al., 2018): Multi-Krum picks ``n - 2f``, then per coordinate the
    mean of the ``n - 4f`` values closest to their median. Needs ``n >= 4f + 3``."""

    def __init__(self, size: int, backend: Backend, num_malicious: int = 0, **kw: Any) -> None:
        super().__init__(size, backend, num_malicious=num_malicious, **kw)

    def result(self, global_vector: Any) -> Any:
        """Bulyan's aggregate of the accepted updates."""
        n, f = len(self.rows), self.num_malicious
        if n < 4 * f + 3:
            raise AggregationError(
                f"bulyan needs at least 4 * num_malicious + 3 = {4 * f + 3} updates, got {n}"
            )
        theta = n - 2 * f
        beta = theta - 2 * f
        self.chosen = self.selected(theta)
        rows = [self.rows[i] for i in self.chosen]
        xp = self.backend.xp

        def closest_mean(block: Any) -> Any:
            med = self._median(block)
            order = xp.argsort(xp.abs(block - med), axis=0)[:beta, ...]
            return xp.mean(xp.take_along_axis(block, order, axis=0), axis=0)

        return self._reduce(rows, closest_mean)
