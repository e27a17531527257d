"""A message's small records travel as one object: fewer Fleet calls per message exchange.

Over a SuperLink every object of a message's tree is its own HTTP call (``PushObject`` /
``PullObject``), and the SuperLink spends about 6-9 ms of CPU on each (its FastAPI middleware
and SQL state; measured with py-spy on flower-superlink 1.42, 2026-12-07), whatever its size.
A train message of the digits example was seven objects (Message, RecordDict, ArrayRecord,
Array, ArrayChunk and two ConfigRecords) and its reply six: about 55 of a plain round's 75
calls, and the SuperLink's CPU (0.65 s a round) was most of the round's time. So a deployed
server (``deploy.prompt_grid``) packs a message's small records (``PACK_RECORD_MAX`` bytes or
less each) into one ``ConfigRecord`` under ``PACKED``: their objects, exactly as Flower deflates
them, as a list of bytes, the RecordDict holding them last. A message is then three objects
(Message, RecordDict, the pack), plus its large records as themselves: a large model's arrays
stay shared between the messages of a round and chunked, as Flower moves them.

The receiving side unpacks before anything reads the content (the lean agent; the stock
SuperNode's ClientApp through ``packing_mod``), checking every packed object against its id,
type and children, as pulled objects are checked, and answers packed when asked packed; the
server unpacks the replies. Unpacked content is the same records under the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from client_runtime.fleet import objects
from fedcore.records import LEAN, Kit, kit_of

PACKED = "fedcore.packed"  # ConfigRecord {OBJECTS: [object bytes, ..., the RecordDict's]}
OBJECTS = "objects"
PACK_RECORD_MAX = 64 * 1024  # a record of at most this many payload bytes is packed
MAX_PACKED_BYTES = 512 * 1024 * 1024  # the arrays a pack may hold (the agent's message budget)


def _size(record: Mapping[str, Any]) -> int:
    """The payload bytes of a record: its arrays' data, its strings and bytes (a number: 8)."""
    total = 0
    for value in record.values():
        for item in value if isinstance(value, list) else [value]:
            data = getattr(item, "data", item)
            total += len(data) if isinstance(data, bytes | str) else 8
    return total


def _convert(record: Any, kit: Kit) -> Any:
    """``record`` (of either kit) as a record of ``kit``."""
    source = kit_of(record)
    if isinstance(record, source.ArrayRecord):
        return kit.ArrayRecord({
            name: kit.Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data)
            for name, a in record.items()})  # fmt: skip
    if isinstance(record, source.ConfigRecord):
        return kit.ConfigRecord(dict(record))
    if isinstance(record, source.MetricRecord):
        return kit.MetricRecord(dict(record))
    raise TypeError(f"a RecordDict cannot hold {type(record).__name__}")


def pack(content: Any) -> Any:
    """``content`` (a RecordDict of either kit) with its small records packed under
    ``PACKED``; ``content`` itself when packing would save no object."""
    if PACKED in content:
        raise ValueError(f"{PACKED!r} is a reserved record name")
    small = {name: record for name, record in content.items()
             if _size(record) <= PACK_RECORD_MAX}  # fmt: skip
    packed = objects.deflate_recorddict(
        LEAN.RecordDict({name: _convert(record, LEAN) for name, record in small.items()}))
    if len(packed) <= 2:  # one record object (and its RecordDict): nothing saved
        return content
    kit = kit_of(content)
    out = kit.RecordDict({name: r for name, r in content.items() if name not in small})
    out[PACKED] = kit.ConfigRecord({OBJECTS: packed})
    return out


def unpack(content: Any, max_bytes: int = MAX_PACKED_BYTES) -> tuple[Any, bool]:
    """``(content with its packed records back in place, whether it was packed)``; a pack
    that is not one (not a ConfigRecord of object bytes, objects that do not check out, a
    record name taken twice) raises ``ValueError`` with the reason."""
    if PACKED not in content:
        return content, False
    kit, packed = kit_of(content), content[PACKED]
    items = packed.get(OBJECTS) if isinstance(packed, kit.ConfigRecord) else None
    if (set(packed) != {OBJECTS} or not isinstance(items, list)
            or not all(isinstance(item, bytes) for item in items)):
        raise ValueError(f"record {PACKED!r} is not a pack of objects")
    inner = objects.inflate_recorddict(items, max_bytes)  # ObjectError is a ValueError
    if PACKED in inner or set(inner) & set(content):
        raise ValueError(f"record {PACKED!r} names a record twice")
    out = kit.RecordDict({name: r for name, r in content.items() if name != PACKED})
    for name, record in inner.items():
        out[name] = _convert(record, kit)
    return out, True


def packing_mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower ClientApp mod (the stock SuperNode path): unpack a packed message before the
    handler sees it and pack its reply (an invalid pack raises: Flower's error reply)."""
    if not msg.has_content() or PACKED not in msg.content:
        return call_next(msg, context)
    msg.content, _ = unpack(msg.content)
    reply = call_next(msg, context)
    if reply.has_content():
        reply.content = pack(reply.content)
    return reply


__all__ = ["OBJECTS", "PACKED", "PACK_RECORD_MAX", "pack", "packing_mod", "unpack"]
