"""Client replies → validated updates, each either accepted or rejected with a reason.

``decode_reply`` reads one train reply: error, missing records, metrics, payload (a dense
vector viewed in place in the message bytes, or a compressed delta decoded here), shape,
dtype, size on the wire. ``NormGuard`` then checks the update's distance to the global model,
``||local - global||``, against a robust threshold: ``factor`` times the median of the norms
of recently accepted updates. Nothing here accumulates anything: rules only ever see updates
that passed.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedcore import compression, protocol
from fedcore.wire import VECTOR_KEY, array_view

_CHUNK = 1 << 17  # elements per norm chunk: the scratch stays in L2
_SCRATCH = threading.local()


def _scratch() -> np.ndarray:
    """A per-thread float32 chunk buffer, allocated once."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None:
        buffer = _SCRATCH.buffer = np.empty(_CHUNK, np.float32)
    return buffer


class Rejected(ValueError):
    """An update that must not be aggregated; the message is the recorded reason."""


@dataclass
class ClientUpdate:
    """One client's accepted contribution: the full local vector or a delta to the global.

    Exactly one of ``values`` (dense local model, usually a view of the message bytes),
    ``delta`` (dense ``local - global``) or ``sparse`` (indices and values of the delta)
    is set.
    """

    num_examples: int
    train_loss: float
    seconds: float
    bytes_up: int
    values: np.ndarray | None = field(default=None, repr=False)
    delta: np.ndarray | None = field(default=None, repr=False)
    sparse: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    norm: float = math.nan  # ||local - global||, set by ``delta_norm``

    def full(self, global_vector: np.ndarray) -> np.ndarray:
        """The client's local model as a host vector (a view when it came dense)."""
        if self.values is not None:
            return self.values
        out = np.array(global_vector, dtype=np.float32, copy=True)
        if self.delta is not None:
            out += self.delta
        else:
            idx, vals = self.sparse  # type: ignore[misc]
            out[idx] += vals
        return out

    def fold(self, backend: Any, acc: Any, weight: float, scale: float = 1.0) -> float:
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
            acc[backend.asarray(idx)] += xp.asarray(weight * scale, dtype=xp.float32) * (
                backend.asarray(vals)
            )
        else:
            dense = np.zeros(acc.shape[0], np.float32)
            dense[idx] = vals
            backend.axpy(acc, weight * scale, backend.asarray(dense))
        return weight


def _record(content: Any, key: str, kind: type, what: str) -> Any:
    """``content[key]`` if it is a ``kind`` record, else ``Rejected``."""
    found = protocol.record(content, key, kind)
    if found is None:
        raise Rejected(f"reply has no {key!r} {what} record")
    return found


def decode_reply(reply: Message, size: int, max_bytes: int | None = None) -> ClientUpdate:
    """Decode one train reply for a model of ``size`` parameters; ``Rejected`` if unusable."""
    if reply.has_error():
        raise Rejected(f"client error: {reply.error.reason}")
    content = reply.content
    metrics = _record(content, protocol.METRICS, MetricRecord, "metric")
    record = _record(content, protocol.UPDATE, ArrayRecord, "array")
    try:
        num_examples = int(metrics["num_examples"])
        train_loss = float(metrics["train_loss"])
        seconds = float(metrics.get("seconds", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(f"bad metrics: {type(exc).__name__}: {exc}") from None
    if num_examples <= 0:
        raise Rejected(f"reported {num_examples} examples")
    nbytes = sum(len(array.data) for array in record.values())
    limit = max_bytes if max_bytes is not None else 2 * 4 * size + 4096
    if nbytes > limit:
        raise Rejected(f"oversized update: {nbytes} bytes on the wire, limit {limit}")
    codec_config = {"name": "none"}
    if protocol.CODEC in content:
        codec_config = dict(_record(content, protocol.CODEC, ConfigRecord, "config"))
    codec = str(codec_config.pop("name", "none"))
    update = ClientUpdate(num_examples, train_loss, seconds, nbytes)
    try:
        if codec == "none":
            if VECTOR_KEY not in record:
                raise Rejected(f"update record has no {VECTOR_KEY!r} array")
            update.values = _check_dense(array_view(record[VECTOR_KEY]), size)
        else:
            arrays = {key: array_view(record[key]) for key in record}
            decoded = compression.decode(codec, arrays, size, **codec_config)
            if isinstance(decoded, tuple):
                update.sparse = decoded
            else:
                update.delta = _check_dense(decoded, size)
    except Rejected:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise Rejected(f"cannot decode {codec!r} update: {exc}") from None
    return update


def _check_dense(vector: np.ndarray, size: int) -> np.ndarray:
    if vector.dtype != np.float32:
        raise Rejected(f"dtype {vector.dtype}, expected float32")
    if vector.shape != (size,):
        raise Rejected(f"shape {vector.shape}, expected ({size},)")
    return vector


def delta_norm(update: ClientUpdate, global_vector: np.ndarray) -> float:
    """``||local - global||`` in one chunked pass; ``Rejected`` for NaN/inf or overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _delta_norm(update, global_vector)


def _delta_norm(update: ClientUpdate, global_vector: np.ndarray) -> float:
    if update.values is not None:
        total, v = 0.0, update.values
        tmp = _scratch()
        for lo in range(0, v.size, _CHUNK):
            t = tmp[: min(_CHUNK, v.size - lo)]
            np.subtract(v[lo : lo + t.size], global_vector[lo : lo + t.size], out=t)
            total += float(np.dot(t, t))
        data = v
    else:
        data = update.delta if update.delta is not None else update.sparse[1]  # type: ignore[index]
        total = float(np.dot(data.astype(np.float64), data.astype(np.float64)))
    if not math.isfinite(total):
        if not np.isfinite(data).all():
            raise Rejected("non-finite values (NaN or inf)")
        raise Rejected("update norm overflows (oversized values)")
    update.norm = math.sqrt(total)
    return update.norm


class NormGuard:
    """Reject updates far larger than usual: ``norm > factor * median`` of recent norms.

    The reference is the median of the last ``window`` accepted norms plus, when the round's
    updates are judged together (``RoundAggregation.offer_all``), all of this round's norms, so
    the first round is protected too; with fewer than ``min_history`` norms nothing is
    rejected for its norm. ``factor <= 0``
    switches the check off.
    """

    def __init__(self, factor: float = 10.0, window: int = 100, min_history: int = 3) -> None:
        self.factor = factor
        self.min_history = min_history
        self.norms: deque[float] = deque(maxlen=window)

    def limit(self, round_norms: list[float] = ()) -> float:
        """The largest acceptable norm given recent history and this round's norms."""
        pool = [*self.norms, *round_norms]
        if self.factor <= 0 or len(pool) < self.min_history:
            return math.inf
        return self.factor * float(np.median(pool))

    def check(self, norm: float, limit: float | None = None) -> None:
        """Raise ``Rejected`` if ``norm`` is above ``limit`` (default: from history alone);
        otherwise remember it."""
        limit = self.limit() if limit is None else limit
        if norm > limit and norm > 0:
            raise Rejected(
                f"update norm {norm:.4g} exceeds {self.factor:g} x median norm ({limit:.4g})"
            )
        self.norms.append(norm)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Recent accepted norms, for checkpoints (the threshold depends on them)."""
        return {"norms": np.asarray(self.norms, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the recent norms from a checkpoint."""
        self.norms.clear()
        self.norms.extend(float(n) for n in state.get("norms", ()))
