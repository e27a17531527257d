"""A memory pool that accounts every byte the engine allocates and enforces a budget.

Buffers come from `MemoryPool.alloc`; the pool counts their bytes as live until the array is
garbage collected (a weak reference fires) or `free` is called. A budget, when set, is checked
*before* numpy allocates, so a device that would run out of memory fails with a clear
`MemoryBudgetError` instead of being killed. Liveness planning is the planner's job.

Large buffers (64 KiB and up) are recycled: such a buffer is a view of a byte array the pool
keeps, and when the view dies (and no other view of the bytes is left) the bytes wait in a
free list for the next request of exactly that size, so an eager step does not fault fresh
pages in for every activation. Live plus cached bytes never exceed the peak (CACHE_SLACK adds
a quarter of it: measured, the slack bought no step time on the CNN, LSTM or tiny GPT and
cost the GPT 8 MB of its 159 MB peak RSS); `reset_peak` trims the free list to the new peak.
A pool with a budget recycles nothing: there memory comes first. Cached bytes are not live
bytes.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .errors import MemoryBudgetError

__all__ = ["MemoryPool"]

_ITEMSIZE = {np.float32: 4, np.float64: 8, np.int64: 8, np.bool_: 1}

#: buffers of at least this many bytes are recycled through the free list
RECYCLE_MIN_BYTES = 1 << 16
#: let live + cached bytes reach peak * 1.25 (False: the peak itself)
CACHE_SLACK = False


class _Ref(weakref.ref):
    """Weak reference to a pooled array: its key, byte count and (if recyclable) its bytes."""

    __slots__ = ("key", "nbytes", "buf")


class MemoryPool:
    """Live/peak byte accounting for engine buffers, with an optional budget."""

    def __init__(self, budget_bytes: int | None = None, recycle: bool = True):
        self._lock = threading.RLock()
        self._refs: dict[int, _Ref] = {}
        self._live = 0
        self._peak = 0
        self.num_allocs = 0
        self.recycle = recycle
        self._free: dict[int, list[np.ndarray]] = {}  # nbytes -> byte arrays ready for reuse
        self._pending: list[np.ndarray] = []  # bytes whose array died; views may remain
        self._cached = 0  # bytes in _free and _pending
        self._dead = self._on_dead  # the weak references' callback, bound once
        self.budget_bytes = budget_bytes

    @property
    def budget_bytes(self) -> int | None:
        """The most bytes that may be live at once (None: unlimited)."""
        return self._budget

    @budget_bytes.setter
    def budget_bytes(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"budget_bytes must be >= 0 or None, got {value}")
        with self._lock:
            self._budget = None if value is None else int(value)
            self._trim()

    @property
    def live_bytes(self) -> int:
        """Bytes of pooled arrays still alive (or not yet freed)."""
        return self._live

    @property
    def peak_bytes(self) -> int:
        """The highest `live_bytes` seen since creation or the last `reset_peak`."""
        return self._peak

    @property
    def cached_bytes(self) -> int:
        """Bytes of dead buffers kept for reuse (not live; see the module docstring)."""
        return self._cached

    def release_cached(self) -> int:
        """Drop every recycled buffer (e.g. before a long-lived allocation); returns bytes."""
        with self._lock:
            n = self._cached
            self._free.clear()
            self._pending.clear()
            self._cached = 0
            return n

    def forget_after_fork(self) -> None:
        """In a forked child that will not use this pool (a shard worker, `fedcore.nn.
        shard_workers`): a lock of its own (a thread of the parent may have held this one at
        the fork) and no recycled buffers, whose pages the parent goes on writing (each such
        write would leave the child a private copy of the old page)."""
        self._lock = threading.RLock()
        self.release_cached()

    def reset_peak(self) -> None:
        """Restart peak tracking from the current live bytes (e.g. at the start of a round);
        drops the recycled buffers, which may exceed the new peak."""
        with self._lock:
            self._peak = self._live
            self._trim()

    @contextmanager
    def transient_peak(self) -> Iterator[list[int]]:
        """Measure the block's peak: `out[0]` becomes the most bytes live above the start
        (the overall peak is kept)."""
        with self._lock:
            start, outer = self._live, self._peak
            self._peak = start
        out = [0]
        try:
            yield out
        finally:
            with self._lock:
                out[0] = self._peak - start
                self._peak = max(outer, self._peak)

    def alloc(self, shape: tuple[int, ...] | int, dtype: np.dtype | type = np.float32,
              what: str = "") -> np.ndarray:
        """An uninitialised array, counted as live; raises MemoryBudgetError before allocating."""
        itemsize = _ITEMSIZE.get(dtype) or np.dtype(dtype).itemsize
        if type(shape) is int:
            shape = (shape,)
        nbytes = math.prod(shape) * itemsize
        if nbytes >= RECYCLE_MIN_BYTES and self.recycle and self._budget is None:
            # an eager step makes ~100 of these: the count and the free-list take are
            # written out here, under one lock acquisition, with no method calls (the pool
            # was ~8 % of a MobileNet eager step sampled by py-spy; an alloc and its free
            # went from ~2.3 to ~2.0 us)
            with self._lock:
                if self._budget is not None:  # set by another thread since the test above
                    self._check_budget(nbytes, what)
                live = self._live + nbytes
                self._live = live
                if live > self._peak:
                    self._peak = live
                self.num_allocs += 1
                if self._pending:
                    self._settle()
                bufs = self._free.get(nbytes)
                if bufs:
                    self._cached -= nbytes
                    buf = bufs.pop()
                else:
                    buf = None
                    if live + self._cached > self._peak:  # _trim's test, without the call
                        self._trim()  # the new bytes are live now: live + cached <= peak
            try:
                if buf is None:
                    buf = np.empty(nbytes, np.uint8)
                arr = np.ndarray(shape, dtype, buf)  # a view of buf: buf is its base
            except BaseException:
                self._unreserve(nbytes)
                raise
        else:
            self._reserve(nbytes, what)
            buf = None
            try:
                arr = np.empty(shape, dtype)
            except BaseException:
                self._unreserve(nbytes)
                raise
        ref = _Ref(arr, self._dead)
        ref.key = key = id(arr)
        ref.nbytes = nbytes
        ref.buf = buf
        self._refs[key] = ref  # a single dict store: atomic, no lock needed
        return arr

    def _settle(self) -> None:
        """Move pending byte arrays that no view references any more to the free list."""
        keep = []
        for buf in self._pending:
            if sys.getrefcount(buf) > 3:  # the list, `buf` and the argument: a view remains
                keep.append(buf)
            else:
                self._free.setdefault(buf.nbytes, []).append(buf)
        if len(keep) != len(self._pending):
            self._pending = keep

    def _cache_limit(self) -> int:
        """The most bytes live + cached may hold: the peak plus a quarter (CACHE_SLACK);
        nothing under a budget (memory comes first there)."""
        if self._budget is not None:
            return 0
        return self._peak + (self._peak >> 2) if CACHE_SLACK else self._peak

    def _trim(self) -> None:
        """Drop recycled bytes until live + cached <= peak (still-viewed ones first)."""
        excess = self._live + self._cached - self._cache_limit()
        if excess <= 0:
            return
        while self._pending and excess > 0:
            n = self._pending.pop().nbytes
            self._cached -= n
            excess -= n
        for size in list(self._free):
            bufs = self._free[size]
            while bufs and excess > 0:
                bufs.pop()
                self._cached -= size
                excess -= size
            if not bufs:
                del self._free[size]
            if excess <= 0:
                return

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
            self._check_budget(nbytes, what)
            self._count(nbytes)

    def _check_budget(self, nbytes: int, what: str) -> None:
        if self._budget is not None and self._live + nbytes > self._budget:
            raise MemoryBudgetError(nbytes, self._live, self._budget, what)

    def _count(self, nbytes: int) -> None:
        """Count `nbytes` more as live (the lock held, the budget already checked)."""
        live = self._live + nbytes
        self._live = live
        if live > self._peak:
            self._peak = live
        self.num_allocs += 1

    def _unreserve(self, nbytes: int) -> None:
        with self._lock:
            self._live -= nbytes

    def _watch(self, arr: np.ndarray, nbytes: int) -> None:
        ref = _Ref(arr, self._dead)
        ref.key = key = id(arr)
        ref.nbytes = nbytes
        ref.buf = None
        self._refs[key] = ref

    def _on_dead(self, ref: _Ref) -> None:
        with self._lock:
            if self._refs.get(ref.key) is ref:
                del self._refs[ref.key]
                self._live -= ref.nbytes
                buf = ref.buf
                if buf is not None and self._live + self._cached + ref.nbytes <= (
                        self._peak if self._budget is None and not CACHE_SLACK
                        else self._cache_limit()):
                    # the dying array still references buf; reuse waits for _settle
                    self._pending.append(buf)
                    self._cached += ref.nbytes
            ref.buf = None

    def __repr__(self) -> str:
        return (
            f"MemoryPool(live={self._live}, peak={self._peak}, budget={self._budget}, "
            f"arrays={len(self._refs)}, cached={self._cached})"
        )
