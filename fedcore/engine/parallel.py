"""Intra-op parallelism for the memory-bound parts of the layer ops.

BLAS already runs a big GEMM on every core, but numpy's ufuncs and copies (im2col, pooling,
col2im adds) run on one. They release the GIL, so splitting them over the batch axis across a
few threads uses the other cores, as PyTorch's intra-op threads do. The thread count defaults
to the CPUs this process may run on (FEDCORE_NUM_THREADS overrides it, `set_num_threads`
changes it); with one thread, or from inside a worker, everything runs inline.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["get_num_threads", "parallel_range", "set_num_threads"]

ENV_THREADS = "FEDCORE_NUM_THREADS"

_lock = threading.Lock()
_state = threading.local()
_threads: int | None = None
_executor: ThreadPoolExecutor | None = None


def _default_threads() -> int:
    raw = os.environ.get(ENV_THREADS, "").strip()
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise ValueError(f"{ENV_THREADS}={raw!r} is not an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads the layer ops split their elementwise work over."""
    global _threads
    if _threads is None:
        _threads = _default_threads()
    return _threads


def set_num_threads(n: int | None) -> None:
    """Use `n` threads (None: back to the default from FEDCORE_NUM_THREADS / the CPU count)."""
    global _threads, _executor
    if n is not None and n < 1:
        raise ValueError(f"set_num_threads expects n >= 1 or None, got {n}")
    with _lock:
        _threads = n
        if _executor is not None:
            _executor.shutdown(wait=True)
            _executor = None


def _get_executor(workers: int) -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None or _executor._max_workers < workers:
            if _executor is not None:
                _executor.shutdown(wait=True)
            _executor = ThreadPoolExecutor(workers, thread_name_prefix="fedcore-op",
                                           initializer=_mark_worker)
        return _executor


def _mark_worker() -> None:
    _state.worker = True


def parallel_range(n: int, fn: Callable[[int, int], None], min_chunk: int = 1,
                   work: int = 0) -> None:
    """Call fn(lo, hi) over contiguous chunks covering range(n), on up to get_num_threads()
    threads; inline when `work` (elements touched) is below ~256K, where threads cost more
    than they save."""
    k = min(get_num_threads(), n // max(min_chunk, 1))
    if k <= 1 or (work and work < 1 << 18) or getattr(_state, "worker", False):
        fn(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    ex = _get_executor(k - 1)
    futures = [ex.submit(fn, bounds[i], bounds[i + 1]) for i in range(1, k)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()
