"""Client replies → updates: every field of a reply checked before anything is kept.

``read_reply`` is what every train reply goes through first: client error, its records, its
weight and loss, as a ``ReplyFormat`` places them (fedcore's protocol, or Flower's for
``FlowerStrategy``). ``decode_reply`` then reads fedcore's payload: a dense vector viewed in
place in the message bytes, or a compressed delta decoded here; shape, dtype, size on the
wire. ``decode_client_info`` reads a discovery reply, ``client_report`` what a reply says about
its client besides the update. Anything wrong is ``Rejected`` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from aggregator.updates import ClientUpdate, Rejected
from fedcore import compression, protocol
from fedcore.wire import VECTOR_KEY, array_view

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
