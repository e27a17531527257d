"""Message records without Flower: the lean device agent's ``RecordDict`` and friends.

Flower's ``flwr.app`` records cost a device 68 MB (importing any of ``flwr`` runs its whole
``__init__``). These classes hold the same data with the same names and the parts of the API
the client handlers use (mapping access, ``Array(ndarray)``, ``Array(dtype=, shape=, stype=,
data=)``, ``Array.numpy()``), so one set of handlers serves both: a handler builds its reply
with the ``Kit`` of the message it was given (``kit_of``), Flower's in a ``ClientApp`` and these
in the lean agent (``client_runtime.fleet``), which turns them into Flower's wire format.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

NPY_STYPE = "numpy.ndarray"  # Flower's serialisation type for np.save bytes


class Array:
    """One array as ``np.save`` bytes (``data``) with its ``dtype``, ``shape`` and ``stype``."""

    __slots__ = ("data", "dtype", "shape", "stype")

    def __init__(
        self,
        ndarray: np.ndarray | None = None,
        *,
        dtype: str | None = None,
        shape: tuple[int, ...] | list[int] | None = None,
        stype: str | None = None,
        data: bytes | None = None,
    ) -> None:
        if ndarray is not None:
            import numpy as np  # here, not above: a device waiting for a run holds no numpy

            buffer = io.BytesIO()
            np.save(buffer, ndarray, allow_pickle=False)
            dtype, shape, data = str(ndarray.dtype), ndarray.shape, buffer.getvalue()
            stype = NPY_STYPE
        if dtype is None or shape is None or stype is None or data is None:
            raise TypeError("Array needs an ndarray or all of dtype, shape, stype and data")
        self.dtype, self.shape, self.stype = str(dtype), tuple(int(n) for n in shape), str(stype)
        self.data = bytes(data)

    def numpy(self) -> np.ndarray:
        """A copy as an ndarray (never unpickled)."""
        if self.stype != NPY_STYPE:
            raise TypeError(f"unsupported serialisation type {self.stype!r}")
        import numpy as np

        return np.load(io.BytesIO(self.data), allow_pickle=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Array) and (self.dtype, self.shape, self.stype, self.data) == (
            other.dtype, other.shape, other.stype, other.data)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Array(dtype={self.dtype!r}, shape={self.shape}, {len(self.data)} bytes)"


class ArrayRecord(dict[str, Array]):
    """Named arrays (Flower's ``ArrayRecord``)."""


class ConfigRecord(dict[str, Any]):
    """Named config values: bool, int, float, str, bytes or lists of one of those."""


class MetricRecord(dict[str, Any]):
    """Named metrics: int, float or lists of one of those."""


class RecordDict(dict[str, Any]):
    """A message's content: named ``ArrayRecord``, ``ConfigRecord`` and ``MetricRecord``."""


@dataclass(frozen=True)
class Kit:
    """One family of record classes (Flower's or these)."""

    Array: type
    ArrayRecord: type
    ConfigRecord: type
    MetricRecord: type
    RecordDict: type


LEAN = Kit(Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict)


def flower_kit() -> Kit:
    """Flower's record classes (imports ``flwr.app``)."""
    import flwr.app as flower

    return Kit(flower.Array, flower.ArrayRecord, flower.ConfigRecord, flower.MetricRecord,
               flower.RecordDict)


def kit_of(container: Any) -> Kit:
    """The kit ``container`` (a RecordDict or record) belongs to: lean or Flower's."""
    if isinstance(container, RecordDict | ArrayRecord | ConfigRecord | MetricRecord):
        return LEAN
    return flower_kit()


__all__ = [
    "LEAN", "NPY_STYPE", "Array", "ArrayRecord", "ConfigRecord", "Kit", "MetricRecord",
    "RecordDict", "flower_kit", "kit_of",
]
