"""Flat parameter vectors on Flower's wire format (``ArrayRecord``).

Clients and the server exchange one flat float32 vector per model. Flower's ``Array`` holds
``np.save`` bytes and its ``.numpy()`` goes through ``np.load`` (a full copy); ``read_vector``
instead views the payload in place, which matters when the server folds in hundreds of updates.
Flower is imported lazily so that a device that only trains never pays for it.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fedcore.records import NPY_STYPE, Kit, flower_kit

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

VECTOR_KEY = "vector"


def vector_record(vector: np.ndarray, kit: Kit | None = None) -> ArrayRecord:
    """Wrap one flat vector in an ``ArrayRecord`` (of ``kit``, default Flower's) under
    ``VECTOR_KEY``.

    The payload is the same ``.npy`` bytes ``Array(ndarray)`` would write, built from a cached
    header and one copy of the data (``np.save`` through a ``BytesIO`` costs 2.4x more).
    """
    kit = kit or flower_kit()
    vector = np.ascontiguousarray(vector)
    if vector.ndim != 1:
        return kit.ArrayRecord({VECTOR_KEY: kit.Array(vector)})
    data = _npy_header(vector.dtype.str, vector.size) + vector.tobytes()
    array = kit.Array(dtype=str(vector.dtype), shape=vector.shape, stype=NPY_STYPE, data=data)
    return kit.ArrayRecord({VECTOR_KEY: array})


@lru_cache(maxsize=64)
def _npy_header(descr: str, size: int) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-ordered vector of ``size`` ``descr``."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": (size,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def read_vector(record: ArrayRecord) -> np.ndarray:
    """Return the flat vector of ``record`` as a read-only view of the message bytes."""
    if VECTOR_KEY not in record:
        raise ValueError(f"array record has no {VECTOR_KEY!r} entry (keys: {list(record)})")
    return array_view(record[VECTOR_KEY])


MAX_HEADER_BYTES = 4096  # an honest .npy header of a flat vector is 128 bytes
_PLAIN_KINDS = "fiub"  # numbers and booleans; no objects, records, strings or datetimes


def _header_end(data: memoryview) -> int:
    """Where a ``.npy`` header ends by its length field (at most ``12 + MAX_HEADER_BYTES``;
    a payload too short for the field: its length, and the parser refuses it)."""
    if len(data) < 12:
        return len(data)
    if data[6] == 1:
        return min(10 + int.from_bytes(data[8:10], "little"), 12 + MAX_HEADER_BYTES)
    return min(12 + int.from_bytes(data[8:12], "little"), 12 + MAX_HEADER_BYTES)


@lru_cache(maxsize=64)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran order, dtype, data offset)`` of a ``.npy`` header, parsed once per
    distinct header (a round's replies share one: numpy's parser costs ~40 us a reply)."""
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
        version, np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(stream, max_header_size=MAX_HEADER_BYTES)
    return tuple(shape), bool(fortran), dtype, stream.tell()


def array_view(array: Array, max_bytes: int | None = None) -> np.ndarray:
    """View a Flower ``Array`` (``np.save`` bytes) as an ndarray without copying.

    The payload is untrusted: its ``.npy`` header must parse (bounded, no pickles), agree with
    the ``Array``'s dtype and shape, name a plain little-endian number type, and the data must
    be exactly as long as they say. Anything else raises ``ValueError`` (nothing else), before
    anything is allocated; ``max_bytes`` bounds the payload. A Fortran-ordered payload (what
    ``np.save`` writes for a transposed array) is viewed in Fortran order.
    """
    data = memoryview(array.data)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"array payload of {len(data)} bytes exceeds {max_bytes}")
    if len(data) < 10 or bytes(data[:6]) != b"\x93NUMPY":
        raise ValueError("array payload is not in .npy format")
    try:
        shape, fortran, header_dtype, offset = _parse_npy_header(
            bytes(data[: min(len(data), _header_end(data))])
        )
        dtype = np.dtype(str(array.dtype))
    except Exception as exc:  # a hostile header: every parser error is one ValueError
        raise ValueError(f"array payload has a malformed .npy header: {exc}") from None
    if header_dtype != dtype or tuple(shape) != tuple(array.shape):
        raise ValueError(
            f"array payload says {header_dtype}{list(shape)}, its record {array.dtype}"
            f"{list(array.shape)}"
        )
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.byteorder == ">":
        raise ValueError(f"array payload has unsupported dtype {dtype}")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - offset:
        raise ValueError(
            f"array payload holds {len(data) - offset} data bytes, its header says "
            f"{count * dtype.itemsize}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")
