"""Client replies → validated updates, each either accepted or rejected with a reason.

``read_reply`` is what every train reply goes through first: client error, its records, its
weight and loss, as a ``ReplyFormat`` places them (fedcore's protocol, or Flower's for
``FlowerStrategy``). ``decode_reply`` then reads fedcore's payload: a dense vector viewed in
place in the message bytes, or a compressed delta decoded here; shape, dtype, size on the wire.
``NormGuard`` then checks the update's distance to the global model, ``||local - global||``,
against a robust threshold: ``factor`` times the median of the norms of recently accepted
updates. ``ClientUpdate.fold_measured`` takes that norm in the same pass that folds the update
into a streaming mean (``RoundAggregation.offer_all``); a refused one is folded out by folding
the round again without it, so what a rule ends with only ever comes from updates that passed.
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


def _scratch(dtype: np.dtype) -> np.ndarray:
    """A per-thread chunk buffer of ``dtype``, allocated once per dtype."""
    name = f"buffer_{np.dtype(dtype).name}"
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None:
        buffer = np.empty(_CHUNK, dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer


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
    norm: float = math.nan  # ||local - global||, set by ``delta_norm``

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

    def fold_measured(self, acc: np.ndarray, weight: float, global_host: np.ndarray) -> float:
        """``fold`` (numpy accumulator, no clipping) and ``||local - global||`` in the same
        pass over the update: each chunk is read from memory once, for its norm and its
        fold. Sets and returns ``norm`` (NaN or inf when the update is not finite or
        overflows: the caller refuses it and folds the round again without it)."""
        from aggregator.backend import numpy_axpy

        with np.errstate(over="ignore", invalid="ignore"):
            if self.sparse is not None:
                idx, vals = self.sparse
                total = float(np.dot(vals.astype(np.float64), vals.astype(np.float64)))
                acc[idx] += np.float32(weight) * vals
                coef = weight
            else:
                dense = self.values if self.values is not None else self.delta
                assert dense is not None
                total, tmp = 0.0, _scratch(np.float32)
                for lo in range(0, dense.size, _CHUNK):
                    chunk = dense[lo : lo + _CHUNK]
                    t = tmp[: chunk.size]
                    if self.values is not None:
                        np.subtract(chunk, global_host[lo : lo + chunk.size], out=t)
                        total += float(np.dot(t, t))
                    else:
                        total += float(np.dot(chunk, chunk))
                    numpy_axpy(acc[lo : lo + chunk.size], weight, chunk)
                coef = 0.0 if self.values is not None else weight
        self.norm = math.sqrt(total) if math.isfinite(total) else math.inf
        if not math.isfinite(total):
            finite = self.values if self.values is not None else self.delta
            finite = finite if finite is not None else self.sparse[1]  # type: ignore[index]
            self.norm = math.inf if np.isfinite(finite).all() else math.nan
        return coef

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
            acc[backend.asarray(idx)] += xp.asarray(weight * scale, dtype=acc.dtype) * (
                backend.asarray(vals)
            )
        else:
            wide = acc.dtype == backend.xp.float64
            dense = np.zeros(acc.shape[0], np.float64 if wide else np.float32)
            dense[idx] = vals
            backend.axpy(acc, weight * scale, backend.asarray(dense))
        return weight


DEFAULT_MAX_EXAMPLES = 1_000_000  # examples one reply may claim unless a run sets its own cap
MAX_EXTRA_METRICS = 32  # extra numeric metrics kept from one reply
MAX_LABEL = 64  # characters kept of a client-chosen label (device class, metric name)


def _record(content: Any, key: str | None, kind: type, what: str) -> Any:
    """``content[key]`` if it is a ``kind`` record (``key`` None: the reply's only one), else
    ``Rejected``."""
    if key is None:
        found = [r for r in content.values() if isinstance(r, kind)]
        if len(found) != 1:
            raise Rejected(f"reply has {len(found)} {what} records, expected exactly one")
        return found[0]
    found = protocol.record(content, key, kind)
    if found is None:
        raise Rejected(f"reply has no {key!r} {what} record")
    return found


def _count(value: Any, what: str) -> int:
    """``value`` if it is a true integer (not a bool, not a float), else ``Rejected``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise Rejected(f"{what} must be an integer, got {type(value).__name__} {value!r:.40}")
    return int(value)


def _finite(value: Any, what: str) -> float:
    """``value`` as a finite float (int or float on the wire), else ``Rejected``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise Rejected(f"{what} must be a number, got {type(value).__name__}")
    number = _as_float(value)
    if not math.isfinite(number):
        raise Rejected(f"{what} is not finite ({number})")
    return number


def _as_float(value: Any) -> float:
    """``float(value)``, with an integer beyond float range as inf (not an OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def check_examples(
    num_examples: Any, declared: int | None = None, cap: int = DEFAULT_MAX_EXAMPLES
) -> int:
    """A reply's example count: a positive integer, at most what the client declared when it
    was discovered and at most the run's ``cap``; else ``Rejected``."""
    count = _count(num_examples, "num_examples")
    if count <= 0:
        raise Rejected(f"reported {count} examples")
    if declared is not None and count > declared:
        raise Rejected(f"reported {count} examples, more than the {declared} it declared")
    if count > cap:
        raise Rejected(f"reported {count} examples, more than the cap of {cap}")
    return count


def _check_codec(content: Any, codec: str, options: dict[str, Any]) -> None:
    """``Rejected`` unless the reply names exactly the codec and options the server asked for
    (options as the codec completes them with its defaults)."""
    if protocol.CODEC not in content:
        named: dict[str, Any] = {"name": "none"}
    else:
        named = dict(_record(content, protocol.CODEC, ConfigRecord, "config"))
    name = named.pop("name", None)
    try:
        same = name == codec and compression.codec_options(codec, named) == options
    except ValueError:
        same = False
    if not same:
        raise Rejected(
            f"codec {name!r:.40} with options {sorted(named)!r:.80} is not the one asked for "
            f"({codec!r})"
        )


@dataclass(frozen=True)
class ReplyFormat:
    """Where a train reply keeps its update and metrics, and what its weight is.

    The default is fedcore's protocol (the weight an example count); ``FlowerStrategy`` reads
    Flower's: the reply's one ``ArrayRecord`` and one ``MetricRecord`` whatever their names,
    weighted by any positive finite number under ``weight``, the loss optional.
    """

    update: str | None = protocol.UPDATE  # None: the reply's only ArrayRecord
    metrics: str | None = protocol.METRICS  # None: the reply's only MetricRecord
    weight: str = "num_examples"
    examples: bool = True  # the weight is an example count (see check_examples)
    loss: str = "train_loss"
    loss_required: bool = True  # else a missing or non-numeric loss reads as NaN
    seconds: str | None = "seconds"  # the client's training time, where the format has one


FEDCORE_REPLY = ReplyFormat()


def read_reply(
    reply: Message,
    fmt: ReplyFormat = FEDCORE_REPLY,
    *,
    declared: int | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> tuple[ArrayRecord, ClientUpdate]:
    """The checks every train reply passes first, whatever its payload: no client error, its
    update and metric records, its weight (an example count within what the client
    ``declared`` and ``max_examples``, or for Flower's format any positive finite number),
    a finite loss and time. Returns the update record (payload still to decode) and an
    update without payload; ``Rejected`` if anything is wrong."""
    if reply.has_error():
        raise Rejected(f"client error: {reply.error.reason}")
    content = reply.content
    metrics = _record(content, fmt.metrics, MetricRecord, "metric")
    record = _record(content, fmt.update, ArrayRecord, "array")
    if fmt.weight not in metrics or (fmt.loss_required and fmt.loss not in metrics):
        required = f"{fmt.weight} and {fmt.loss} are" if fmt.loss_required else f"{fmt.weight} is"
        raise Rejected(f"bad metrics: {required} required")
    if fmt.examples:
        weight: int | float = check_examples(metrics[fmt.weight], declared, max_examples)
    else:
        weight = _finite(metrics[fmt.weight], fmt.weight)
        if weight <= 0:
            raise Rejected(f"{fmt.weight} is {weight}, not positive")
    if fmt.loss_required:
        train_loss = _finite(metrics[fmt.loss], fmt.loss)
    else:
        try:
            train_loss = _finite(metrics.get(fmt.loss), fmt.loss)
        except Rejected:
            train_loss = math.nan  # only q-FedAvg needs it, and rejects NaN
    seconds = 0.0
    if fmt.seconds is not None:
        seconds = _finite(metrics.get(fmt.seconds, 0.0), fmt.seconds)
        if seconds < 0:
            raise Rejected(f"{fmt.seconds} is negative ({seconds})")
    return record, ClientUpdate(weight, train_loss, seconds, 0)


def decode_reply(
    reply: Message,
    size: int,
    max_bytes: int | None = None,
    *,
    codec: str = "none",
    codec_options: dict[str, Any] | None = None,
    declared: int | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> ClientUpdate:
    """Decode one train reply for a model of ``size`` parameters; ``Rejected`` if unusable.

    The reply is checked completely before anything is allocated or kept: records present,
    metrics typed and finite, ``num_examples`` within what the client ``declared`` and
    ``max_examples``, the payload no larger than ``max_bytes``, the ``codec`` and its options
    exactly what the server asked for (decoded with the server's options, never the client's),
    arrays well formed and of the right dtype and shape. Nothing else escapes: any parser
    error becomes ``Rejected`` with the reason.
    """
    try:
        return _decode(reply, size, max_bytes, codec, codec_options, declared, max_examples)
    except Rejected:
        raise
    except Exception as exc:  # a reply must never end a round: whatever broke, reject it
        raise Rejected(f"malformed reply: {type(exc).__name__}: {exc}"[:300]) from None


def _decode(
    reply: Message,
    size: int,
    max_bytes: int | None,
    codec: str,
    codec_options: dict[str, Any] | None,
    declared: int | None,
    max_examples: int,
) -> ClientUpdate:
    record, update = read_reply(reply, declared=declared, max_examples=max_examples)
    content = reply.content
    nbytes = sum(len(array.data) for array in record.values())
    limit = max_bytes if max_bytes is not None else 2 * 4 * size + 4096
    if nbytes > limit:
        raise Rejected(f"oversized update: {nbytes} bytes on the wire, limit {limit}")
    options = compression.codec_options(codec, codec_options)
    _check_codec(content, codec, options)
    expected_keys = {"none": {VECTOR_KEY}, "topk": {"idx", "val"}}.get(codec, {"q", "lo", "step"})
    if set(record) != expected_keys:
        raise Rejected(
            f"update record holds {sorted(record)!r:.80}, expected {sorted(expected_keys)}"
        )
    update.bytes_up = nbytes
    try:
        arrays = {key: array_view(record[key]) for key in record}
        if codec == "none":
            update.values = _check_dense(arrays[VECTOR_KEY], size)
            return update
        if codec == "topk":
            most = max(1, min(size, round(options["ratio"] * size)))
            if arrays["idx"].size > most:
                raise Rejected(f"topk payload of {arrays['idx'].size} entries, at most {most}")
        else:
            for key in ("lo", "step"):
                if arrays[key].dtype == np.float32 and not np.isfinite(arrays[key]).all():
                    raise Rejected(f"quantized payload: non-finite {key!r}")
        decoded = compression.decode(codec, arrays, size, **options)
    except (ValueError, KeyError, TypeError) as exc:
        raise Rejected(f"cannot decode {codec!r} update: {exc}") from None
    if isinstance(decoded, tuple):
        update.sparse = decoded
    else:
        update.delta = _check_dense(decoded, size)
    return update


def _check_dense(vector: np.ndarray, size: int) -> np.ndarray:
    if vector.dtype != np.float32:
        raise Rejected(f"dtype {vector.dtype}, expected float32")
    if vector.shape != (size,):
        raise Rejected(f"shape {vector.shape}, expected ({size},)")
    return vector


def decode_client_info(reply: Message) -> tuple[int, int | None]:
    """A discovery (query) reply: ``(client id, examples it declares)``; ``Rejected`` if bad."""
    if reply.has_error():
        raise Rejected(f"client error: {reply.error.reason}")
    info = protocol.record(reply.content, protocol.CLIENT_INFO, ConfigRecord)
    if info is None:
        raise Rejected(f"query reply without a {protocol.CLIENT_INFO!r} config record")
    if "partition_id" not in info:
        raise Rejected("query reply names no partition_id")
    client = _count(info["partition_id"], "partition_id")
    if not 0 <= client < 2**63:
        raise Rejected(f"partition_id {client} out of range")
    declared = None
    if "num_examples" in info:
        declared = _count(info["num_examples"], "declared num_examples")
        if declared < 0:
            raise Rejected(f"declared {declared} examples")
    return client, declared


def client_report(reply: Message) -> dict[str, Any]:
    """What a reply says about its client besides the update (device class, extra numeric
    metrics), bounded and typed; nothing for an error reply or a malformed field."""
    if reply.has_error():
        return {}
    content = reply.content
    found: dict[str, Any] = {}
    info = protocol.record(content, protocol.CLIENT_INFO, ConfigRecord)
    device = None if info is None else info.get("device_class")
    if isinstance(device, str) and device:
        found["device_class"] = device[:MAX_LABEL]
    metrics = protocol.record(content, protocol.METRICS, MetricRecord)
    if metrics is not None:
        extra = {
            str(key)[:MAX_LABEL]: _as_float(value)
            for key, value in metrics.items()
            if key not in _KNOWN_METRICS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(_as_float(value))
        }
        if extra:
            found["metrics"] = dict(list(extra.items())[:MAX_EXTRA_METRICS])
    return found


_KNOWN_METRICS = ("num_examples", "train_loss", "seconds")


def check_model(vector: np.ndarray, what: str = "new global model") -> None:
    """``Rejected`` unless every value of the host array ``vector`` is finite."""
    if not bool(np.isfinite(vector).all()):
        raise Rejected(f"{what} has non-finite values (NaN or inf); it is not committed")


def delta_norm(update: ClientUpdate, global_vector: np.ndarray) -> float:
    """``||local - global||`` in one chunked pass; ``Rejected`` for NaN/inf or overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _delta_norm(update, global_vector)


def _delta_norm(update: ClientUpdate, global_vector: np.ndarray) -> float:
    if update.values is not None:
        total, v = 0.0, update.values
        tmp = _scratch(np.result_type(v.dtype, global_vector.dtype))
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

    The limit of a round comes from earlier rounds: the median of the last ``window``
    accepted norms. The first round (fewer than ``min_history`` earlier norms) is judged
    against its own norms together with those, so it is protected too; with fewer than
    ``min_history`` norms in all nothing is refused for its size. A round's accepted norms
    join the history when the whole round has been judged (``judge``), so the limit never
    depends on arrival order. ``factor <= 0`` switches the check off; the default (30) is
    above what honest runs of the shipped scenarios reach (at most 13 x in 100 rounds).
    """

    def __init__(self, factor: float = 30.0, window: int = 100, min_history: int = 3) -> None:
        self.factor = factor
        self.min_history = min_history
        self.norms: deque[float] = deque(maxlen=window)

    def limit(self, round_norms: list[float] = ()) -> float:
        """The largest acceptable norm: ``factor`` x the median of the recent accepted norms
        of earlier rounds; while those are fewer than ``min_history`` (the first round), of
        them and this round's ``round_norms`` together."""
        pool = list(self.norms)
        if len(pool) < self.min_history:
            pool += list(round_norms)
        if self.factor <= 0 or len(pool) < self.min_history:
            return math.inf
        return self.factor * float(np.median(pool))

    def judge(self, norms: list[float]) -> list[str | None]:
        """Why each of a round's updates (by its norm) is refused, or None; the accepted
        norms join the history once the whole round is judged (so the limit within a round
        does not depend on arrival order)."""
        finite = [n for n in norms if math.isfinite(n)]
        limit = self.limit(finite)
        reasons: list[str | None] = []
        for norm in norms:
            if math.isnan(norm):
                reasons.append("non-finite values (NaN or inf)")
            elif math.isinf(norm):
                reasons.append("update norm overflows (oversized values)")
            elif norm > limit and norm > 0:
                reasons.append(self._reason(norm, limit))
            else:
                reasons.append(None)
        self.norms.extend(n for n, r in zip(norms, reasons, strict=True) if r is None)
        return reasons

    def _reason(self, norm: float, limit: float) -> str:
        median = limit / self.factor
        return (
            f"update norm {norm:.4g} exceeds the limit {limit:.4g} "
            f"({self.factor:g} x the median norm {median:.4g} of recent updates)"
        )

    def check(self, norm: float, limit: float | None = None) -> None:
        """Raise ``Rejected`` if ``norm`` is above ``limit`` (default: from history alone);
        otherwise remember it."""
        limit = self.limit() if limit is None else limit
        if norm > limit and norm > 0:
            raise Rejected(self._reason(norm, limit))
        self.norms.append(norm)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Recent accepted norms, for checkpoints (the threshold depends on them)."""
        return {"norms": np.asarray(self.norms, dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the recent norms from a checkpoint."""
        self.norms.clear()
        self.norms.extend(float(n) for n in state.get("norms", ()))
