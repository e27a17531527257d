"""What a client's accepted reply becomes: a ``ClientUpdate``, or ``Rejected`` with a reason.

Replies are checked and decoded into updates by ``aggregator.decode``; the norm guard
(``aggregator.guard``) judges each update's distance to the global model, which
``aggregator.fold`` takes while folding it into a streaming mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import Backend


class Rejected(ValueError):
    """An update that must not be aggregated; the message is the recorded reason."""


@dataclass
class ClientUpdate:
    """One client's accepted contribution: the full local vector or a delta to the global.

    Exactly one of ``values`` (dense local model, usually a view of the message bytes),
    ``delta`` (dense ``local - global``) or ``sparse`` (indices and values of the delta)
    is set. ``num_examples`` is the update's weight: an example count in fedcore's rounds, any
    positive finite number under ``FlowerStrategy`` (Flower's ``weighted_by_key``).
    """

    num_examples: int | float
    train_loss: float
    seconds: float
    bytes_up: int
    values: np.ndarray | None = field(default=None, repr=False)
    delta: np.ndarray | None = field(default=None, repr=False)
    sparse: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    norm: float = math.nan  # ||local - global||, set by ``aggregator.fold``

    def full(self, global_vector: np.ndarray) -> np.ndarray:
        """The client's local model as a host vector (a view when it came dense)."""
        if self.values is not None:
            return self.values
        out = np.array(global_vector, copy=True)
        if self.delta is not None:
            out += self.delta
        else:
            idx, vals = self.sparse  # type: ignore[misc]
            out[idx] += vals
        return out

    def fold(self, backend: Backend, acc: Any, weight: float, scale: float = 1.0) -> float:
        """``acc += weight * (local - (1 - scale) * delta)``, i.e. the update with its delta
        scaled by ``scale``, minus the global part; return the global model's coefficient
        that the caller must add back (``acc + coef * global``)."""
        if self.values is not None:
            backend.axpy(acc, weight * scale, backend.asarray(self.values))
            return weight * (1.0 - scale)
        if self.delta is not None:
            backend.axpy(acc, weight * scale, backend.asarray(self.delta))
            return weight
        idx, vals = self.sparse  # type: ignore[misc]
        if backend.name in ("numpy", "cupy"):
            xp = backend.xp
            acc[backend.asarray(idx)] += xp.asarray(weight * scale, dtype=acc.dtype) * (
                backend.asarray(vals)
            )
        else:
            wide = acc.dtype == backend.xp.float64
            dense = np.zeros(acc.shape[0], np.float64 if wide else np.float32)
            dense[idx] = vals
            backend.axpy(acc, weight * scale, backend.asarray(dense))
        return weight


def check_model(vector: np.ndarray, what: str = "new global model") -> None:
    """``Rejected`` unless every value of the host array ``vector`` is finite."""
    if not bool(np.isfinite(vector).all()):
        raise Rejected(f"{what} has non-finite values (NaN or inf); it is not committed")
