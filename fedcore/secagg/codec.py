"""A compact binary encoding of flat dataclasses (stage messages, the client's saved state).

Fields are written in declaration order, typed by their annotation: ``int`` as an unsigned
64-bit integer, ``float`` as a double, ``bytes``/``str`` with a 32-bit length, ``tuple[int,
...]`` as a count and the integers, ``tuple[bytes, ...]`` as a count, the items' lengths and
the items (all little-endian). A message is then one byte string in one ``ConfigRecord`` entry:
cheaper for Flower to check and ship than a dozen typed entries, and parsing doubles as type
checking: anything malformed raises ``ProtocolViolation``. Fields whose metadata says
``wire=False`` are skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import typing
from typing import Any

from fedcore.secagg.errors import ProtocolViolation

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


@functools.cache
def _layout(cls: type) -> tuple[tuple[str, str], ...]:
    hints = typing.get_type_hints(cls)
    kinds = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("wire", True):
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            kind = "ints" if typing.get_args(hint)[0] is int else "blobs"
        else:
            kind = {int: "int", float: "float", bytes: "bytes", str: "str"}[hint]
        kinds.append((f.name, kind))
    return tuple(kinds)


def pack(obj: Any) -> bytes:
    """Encode the dataclass instance ``obj``."""
    out: list[bytes] = []
    for name, kind in _layout(type(obj)):
        value = getattr(obj, name)
        if kind == "int":
            out.append(_U64.pack(value))
        elif kind == "float":
            out.append(_F64.pack(value))
        elif kind in ("bytes", "str"):
            data = value.encode() if kind == "str" else value
            out += (_U32.pack(len(data)), data)
        elif kind == "ints":
            out.append(struct.pack(f"<I{len(value)}Q", len(value), *value))
        else:
            out.append(struct.pack(f"<I{len(value)}I", len(value), *map(len, value)))
            out += value
    return b"".join(out)


def unpack(cls: type, data: bytes, **extra: Any) -> Any:
    """Decode an instance of ``cls`` (``extra``: values of the fields not on the wire)."""
    at, size, values = 0, len(data), dict(extra)
    try:
        for name, kind in _layout(cls):
            if kind == "int":
                values[name] = _U64.unpack_from(data, at)[0]
                at += 8
            elif kind == "float":
                values[name] = _F64.unpack_from(data, at)[0]
                at += 8
            elif kind in ("bytes", "str"):
                length = _U32.unpack_from(data, at)[0]
                raw, at = data[at + 4 : at + 4 + length], at + 4 + length
                values[name] = raw.decode() if kind == "str" else raw
            else:
                count = _U32.unpack_from(data, at)[0]
                width = "Q" if kind == "ints" else "I"
                items = struct.unpack_from(f"<{count}{width}", data, at + 4)
                at += 4 + struct.calcsize(f"<{count}{width}")
                if kind == "ints":
                    values[name] = items
                else:
                    blobs = []
                    for length in items:
                        blobs.append(data[at : at + length])
                        at += length
                    values[name] = tuple(blobs)
            if at > size:
                raise ProtocolViolation(f"malformed {cls.__name__}: truncated")
    except (struct.error, UnicodeDecodeError, MemoryError, OverflowError):
        raise ProtocolViolation(f"malformed {cls.__name__}: truncated or garbled") from None
    if at != size:
        raise ProtocolViolation(f"malformed {cls.__name__}: {size - at} trailing bytes")
    return cls(**values)
