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

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

VECTOR_KEY = "vector"


def vector_record(vector: np.ndarray) -> ArrayRecord:
    """Wrap one flat vector in an ``ArrayRecord`` under ``VECTOR_KEY``.

    The payload is the same ``.npy`` bytes ``Array(ndarray)`` would write, built from a cached
    header and one copy of the data (``np.save`` through a ``BytesIO`` costs 2.4x more).
    """
    from flwr.app import Array, ArrayRecord

    vector = np.ascontiguousarray(vector)
    if vector.ndim != 1:
        return ArrayRecord({VECTOR_KEY: Array(vector)})
    data = _npy_header(vector.dtype.str, vector.size) + vector.tobytes()
    array = Array(dtype=str(vector.dtype), shape=vector.shape, stype=NPY_STYPE, data=data)
    return ArrayRecord({VECTOR_KEY: array})


NPY_STYPE = "numpy.ndarray"  # Flower's serialisation type for np.save bytes


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


def array_view(array: Array) -> np.ndarray:
    """View a Flower ``Array`` (``np.save`` bytes) as an ndarray without copying."""
    data = memoryview(array.data)
    if bytes(data[:6]) != b"\x93NUMPY":
        raise ValueError("array payload is not in .npy format")
    major = data[6]
    if major == 1:
        header_len, start = int.from_bytes(data[8:10], "little"), 10
    else:
        header_len, start = int.from_bytes(data[8:12], "little"), 12
    dtype = np.dtype(array.dtype)
    count = math.prod(array.shape)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start + header_len)
    return flat.reshape(array.shape)
