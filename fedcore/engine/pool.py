"""A memory pool that accounts every byte the engine allocates and enforces a budget.

Buffers come from `MemoryPool.alloc`; the pool counts their bytes as live until the array is
garbage collected (a weak reference fires) or `free` is called. A budget, when set, is checked
*before* numpy allocates, so a device that would run out of memory fails with a clear
`MemoryBudgetError` instead of being killed. Reuse of freed buffers (caching, liveness
planning) is the planner's job and is left out here on purpose.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from .errors import MemoryBudgetError

__all__ = ["MemoryPool"]

_ITEMSIZE = {np.float32: 4, np.float64: 8, np.int64: 8, np.bool_: 1}


class _Ref(weakref.ref):
    """Weak reference to a pooled array that remembers its key and byte count."""

    __slots__ = ("key", "nbytes")


class MemoryPool:
    """Live/peak byte accounting for engine buffers, with an optional budget."""

    def __init__(self, budget_bytes: int | None = None):
        self._lock = threading.RLock()
        self._refs: dict[int, _Ref] = {}
        self._live = 0
        self._peak = 0
        self.num_allocs = 0
        self.budget_bytes = budget_bytes

    @property
    def budget_bytes(self) -> int | None:
        """The most bytes that may be live at once (None: unlimited)."""
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"budget_bytes must be >= 0 or None, got {value}")
        self._budget = None if value is None else int(value)

    @property
    def live_bytes(self) -> int:
        """Bytes of pooled arrays still alive (or not yet freed)."""
        return self._live

    @property
    def peak_bytes(self) -> int:
        """The highest `live_bytes` seen since creation or the last `reset_peak`."""
        return self._peak

    def reset_peak(self) -> None:
        """Restart peak tracking from the current live bytes (e.g. at the start of a round)."""
        with self._lock:
            self._peak = self._live

    def alloc(self, shape: tuple[int, ...] | int, dtype: np.dtype | type = np.float32,
              what: str = "") -> np.ndarray:
        """An uninitialised array, counted as live; raises MemoryBudgetError before allocating."""
        itemsize = _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize
        if type(shape) is int:
            shape = (shape,)
        nbytes = math.prod(shape) * itemsize
        self._reserve(nbytes, what)
        try:
            arr = np.empty(shape, dtype)
        except BaseException:
            self._unreserve(nbytes)
            raise
        ref = _Ref(arr, self._on_dead)
        ref.key = key = id(arr)
        ref.nbytes = nbytes
        self._refs[key] = ref  # a single dict store: atomic, no lock needed
        return arr

    def zeros(self, shape: tuple[int, ...] | int, dtype: np.dtype | type = np.float32,
              what: str = "") -> np.ndarray:
        """Like `alloc`, filled with zeros."""
        arr = self.alloc(shape, dtype, what)
        arr.fill(0)
        return arr

    def track(self, arr: np.ndarray, what: str = "") -> np.ndarray:
        """Account for an array numpy already allocated (a temporary turned result).

        Views and arrays the pool already knows are ignored. The budget is still enforced, but
        necessarily after the fact: on failure the caller should drop the array.
        """
        if arr.base is not None or id(arr) in self._refs:
            return arr
        self._reserve(arr.nbytes, what)
        self._watch(arr, arr.nbytes)
        return arr

    def owns(self, arr: np.ndarray) -> bool:
        """True when `arr` is a live array this pool accounts for."""
        ref = self._refs.get(id(arr))
        return ref is not None and ref() is arr

    def free(self, arr: np.ndarray) -> None:
        """Stop counting `arr` now (the caller promises not to use it any more)."""
        with self._lock:
            ref = self._refs.get(id(arr))
            if ref is None or ref() is not arr:
                raise ValueError("free(): this array was not allocated by this pool")
            del self._refs[id(arr)]
            self._live -= ref.nbytes

    def _reserve(self, nbytes: int, what: str) -> None:
        with self._lock:
            live = self._live
            if self._budget is not None and live + nbytes > self._budget:
                raise MemoryBudgetError(nbytes, live, self._budget, what)
            live += nbytes
            self._live = live
            if live > self._peak:
                self._peak = live
            self.num_allocs += 1

    def _unreserve(self, nbytes: int) -> None:
        with self._lock:
            self._live -= nbytes

    def _watch(self, arr: np.ndarray, nbytes: int) -> None:
        ref = _Ref(arr, self._on_dead)
        ref.key = key = id(arr)
        ref.nbytes = nbytes
        self._refs[key] = ref

    def _on_dead(self, ref: _Ref) -> None:
        with self._lock:
            if self._refs.get(ref.key) is ref:
                del self._refs[ref.key]
                self._live -= ref.nbytes

    def __repr__(self) -> str:
        return (
            f"MemoryPool(live={self._live}, peak={self._peak}, budget={self._budget}, "
            f"arrays={len(self._refs)})"
        )
