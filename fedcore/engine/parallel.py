"""Intra-op parallelism: one large kernel split into slabs that run on several cores at once.

numpy runs each ufunc on one core. The big kernels of a training step (im2col and max pooling,
softmax's `exp`, bias adds, optimizer updates over the flat parameter vector, and the large
matrix products) are split along one axis into a slab per thread; numpy releases the GIL
inside each kernel, so the slabs really run side by side (PyTorch's `at::parallel_for`).

Two thread pools do not mix (see `_claim_blas`), so BLAS keeps its own threads only until
fedcore first splits a kernel itself (a model with big elementwise work: convolutions, a
softmax over a large vocabulary); from then on BLAS runs on one thread and fedcore splits the
large products too. A model of medium products and small elementwise work (an MLP) never
gets there and keeps BLAS's threads, which hand work over faster than Python threads can.
With one fedcore thread, BLAS runs on one thread from the engine's first product.

Handing a slab to a worker costs thread wake-ups (each lock or GIL hand-off wakes a sleeping
thread: 0.1-0.3 ms a split on the 2-core VM this was tuned on), so each slab must be worth
GRAIN element passes per numpy call in it (`parallel_for`'s `calls`: short calls convoy on
the GIL), or GEMM_GRAIN multiply-adds for a product; smaller work stays serial. The thread
count is `set_num_threads(n)`, else FEDCORE_NUM_THREADS, else OMP_NUM_THREADS, else the
number of cores this process may use; 1 turns all of this off. A call made while the workers
are busy (another op on a threaded engine, a nested call) runs serially instead of waiting.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["ENV_VAR", "GEMM_GRAIN", "GRAIN", "Aside", "aside", "claim_blas", "elementwise",
           "get_num_threads", "matmul", "parallel_for", "serial", "set_num_threads",
           "side_by_side", "tasks"]

ENV_VAR = "FEDCORE_NUM_THREADS"

#: element passes a slab must have at least: a smaller kernel runs on the calling thread
GRAIN = 1 << 18

_state: dict = {"threads": None}
_busy = threading.Lock()  # held while a parallel region runs


def _default_threads() -> int:
    """FEDCORE_NUM_THREADS; else OMP_NUM_THREADS, which process managers such as Ray set to a
    worker's share of the cores (as PyTorch honours it); else every core this process may
    use."""
    for name in (ENV_VAR, "OMP_NUM_THREADS"):
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        try:
            n = int(raw)
        except ValueError:
            if name != ENV_VAR:
                continue  # someone else's malformed setting: not ours to reject
            raise ValueError(f"{ENV_VAR}={raw!r} is not a whole number of threads") from None
        if n < 1:
            if name != ENV_VAR:
                continue
            raise ValueError(f"{ENV_VAR}={raw!r} must be at least 1")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """How many threads a large kernel is split over (1: no intra-op parallelism)."""
    n = _state["threads"]
    if n is None:
        n = _state["threads"] = _default_threads()
    return n


def set_num_threads(n: int) -> None:
    """Split large kernels over `n` threads from now on (1 turns intra-op parallelism off)."""
    if int(n) != n or n < 1:
        raise ValueError(f"the number of threads must be a whole number >= 1, got {n!r}")
    _state["threads"] = int(n)


class _Worker:
    """A daemon thread that runs queued tasks in order; `wait` joins all of them."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        # finished-task tokens: a C-level queue, cheaper to signal and to wait on than a
        # threading.Semaphore (whose acquire and release run Python code on both threads)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name="fedcore-intra-op", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, lo, hi = self._tasks.get()
            try:
                if self._error is None:  # after a failure, the rest of the batch is skipped
                    fn(lo, hi)
            except BaseException as exc:  # re-raised on the calling thread by wait()
                self._error = exc
            fn = None  # a finished task must not keep its arrays alive until the next one
            self._done.put(None)

    def start(self, fn: Callable[[int, int], None], lo: int, hi: int) -> None:
        self._pending += 1
        self._tasks.put((fn, lo, hi))

    def wait(self) -> BaseException | None:
        for _ in range(self._pending):
            self._done.get()
        self._pending = 0
        err, self._error = self._error, None
        return err


_workers: list[_Worker] = []


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: forget its workers (waiting on one
    would hang) and take a lock no dead thread can be holding."""
    global _busy
    _workers.clear()
    _busy = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def serial() -> Iterator[None]:
    """Run the block's kernels on the calling thread alone, as a shard in another process
    does (`fedcore.nn.shard_workers`): the workers count as busy, so nothing is split."""
    if not _busy.acquire(blocking=False):  # already inside a region: splits are serial
        yield
        return
    try:
        yield
    finally:
        _busy.release()


def parallel_for(n: int, fn: Callable[[int, int], None], work: int, calls: int = 1) -> None:
    """Call `fn(lo, hi)` over slabs covering rows [0, n), in parallel when worthwhile.

    `work` estimates the kernel's cost in simple elementwise passes over one element each
    (an exp counts as several); `calls` is how many numpy calls the whole kernel makes when
    run serially (a slab loop of seven calls: 7; pieces of a fixed size: 7 per piece). The
    kernel is split into at most work // (calls * GRAIN) slabs, so that each slab's calls
    (the kernel's cut as many ways) are worth GRAIN on average; under two slabs (or with one
    thread, or the workers already busy) it runs as `fn(0, n)`. Each call retakes the GIL, and
    on a machine whose idle cores halt a thread that finds it taken sleeps and is woken
    late, so a split of short calls runs in convoy and gains nothing (measured at the tiny
    GPT's shape: RMSNorm, RoPE and SwiGLU were no faster on two threads than on one). Slabs
    are contiguous, in order, and disjoint; `fn` must write only its own rows.
    """
    if work < 2 * calls * GRAIN:  # the common case for small models: no thread bookkeeping
        fn(0, n)
        return
    _split(n, fn, min(get_num_threads(), n, work // (calls * GRAIN)))


def elementwise(fn: Callable[..., object], out: np.ndarray, *args: object,
                cost: int = 1) -> np.ndarray:
    """`fn(*args, out=out)` (a ufunc, or a function shaped like one), split by leading rows.

    An argument is cut along with `out` when it has out's rank and leading length; anything
    else (a scalar, a bias row that broadcasts) goes to every slab whole. `cost` weighs an
    element (an exp is worth several simple passes). Returns `out`.
    """
    if out.size * cost < 2 * GRAIN or out.ndim == 0:
        fn(*args, out=out)
        return out
    n, nd = out.shape[0], out.ndim
    cut = [isinstance(a, np.ndarray) and a.ndim == nd and a.shape[0] == n for a in args]

    def slab(lo: int, hi: int) -> None:
        fn(*[a[lo:hi] if c else a for a, c in zip(args, cut, strict=True)],  # type: ignore[index]
           out=out[lo:hi])

    _split(n, slab, min(get_num_threads(), n, out.size * cost // GRAIN))
    return out


def _split(n: int, fn: Callable[[int, int], None], threads: int) -> None:
    """fn over `threads` slabs of [0, n): the caller runs the first, workers the others."""
    if threads < 2 or not _busy.acquire(blocking=False):
        fn(0, n)
        return
    _claim_blas()
    try:
        while len(_workers) < threads - 1:
            _workers.append(_Worker())
        bounds = [n * i // threads for i in range(threads + 1)]
        for i in range(1, threads):
            _workers[i - 1].start(fn, bounds[i], bounds[i + 1])
        error: BaseException | None = None
        try:
            fn(bounds[0], bounds[1])
        except BaseException as exc:
            error = exc
        for i in range(1, threads):
            err = _workers[i - 1].wait()
            error = error or err
        if error is not None:
            raise error
    finally:
        _busy.release()


def tasks(jobs: list[Callable[[], None]], work: int) -> None:
    """Run independent jobs side by side, one per thread, when that beats splitting each.

    With at least as many jobs as threads, each `work` multiply-adds (or GEMM_GRAIN-weighted
    passes) or more, the jobs are dealt out over the threads in order (the caller runs the
    first share) and each runs whole: one hand-off for all of them, and every kernel at full
    size (a matmul's input and weight gradients, two GEMMs of equal size, are one split
    instead of two half-width ones; products too small to split at all run in parallel too).
    Otherwise they run one after the other on the caller, each splitting itself as usual.
    Jobs must write disjoint memory; kernels they call run serially (the workers are busy).
    """
    threads = get_num_threads()
    if threads < 2 or len(jobs) < threads or work < GEMM_GRAIN:
        for job in jobs:
            job()
        return

    def share(lo: int, hi: int) -> None:
        for job in jobs[lo:hi]:
            job()

    _split(len(jobs), share, threads)


def side_by_side(jobs: list[Callable[[], None]]) -> None:
    """Run the jobs at once, each on a thread of its own (the caller runs the first), and
    return when all have finished, re-raising the first error.

    For work that is parallel as a whole (the shards of a data-parallel step,
    `fedcore.nn.shards`): one hand-off for all of it instead of one per kernel. Every kernel
    a job calls runs on that job's thread alone (the workers are busy, so splits run
    serially; BLAS runs one thread). With the workers already busy (a nested call) or one
    job, the jobs run one after the other on the caller.
    """
    def share(lo: int, hi: int) -> None:
        for job in jobs[lo:hi]:
            job()

    _split(len(jobs), share, len(jobs))


class Aside:
    """Tasks that run on a worker while the caller goes on (see `aside`)."""

    def __init__(self, worker: _Worker | None):
        self._worker = worker

    @property
    def overlaps(self) -> bool:
        """True when tasks run on a worker beside the caller (False: each runs at once)."""
        return self._worker is not None

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue `fn` behind the earlier tasks, or run it right now without a worker."""
        if self._worker is None:
            fn()
        else:
            self._worker.start(lambda lo, hi: fn(), 0, 0)


@contextmanager
def aside() -> Iterator[Aside]:
    """Run submitted tasks, in order, on a worker thread beside the caller's own work.

    For pipelines inside one op: the caller walks a serial chain (e.g. an RNN's steps) and
    hands off independent work (the weight gradients of the steps done so far) as it goes.
    The block's end waits for every task and re-raises the first error. With one thread, or
    when the workers are busy, each task runs at once on the caller's thread (`overlaps` is
    then False, so a caller may hand off fewer, larger tasks).
    """
    if get_num_threads() < 2 or not _busy.acquire(blocking=False):
        yield Aside(None)
        return
    _claim_blas()
    try:
        if not _workers:
            _workers.append(_Worker())
        worker = _workers[0]
        error: BaseException | None = None
        try:
            yield Aside(worker)
        except BaseException as exc:
            error = exc
        err = worker.wait()
        if error is not None or err is not None:
            raise error or err  # type: ignore[misc]
    finally:
        _busy.release()


# -- matrix products ------------------------------------------------------------------------
#: multiply-adds a slab of a split product must have at least (about 0.3 ms of one core
#: here): a product with fewer than twice this is one BLAS call on the calling thread
GEMM_GRAIN = 12_000_000


def claim_blas() -> bool:
    """Run BLAS on one thread from now on (see `_claim_blas`); False when its threads cannot
    be set here."""
    return _claim_blas()


def _claim_blas() -> bool:
    """Run BLAS on one thread from now on, so that fedcore's threads are the only ones.

    Idle OpenBLAS threads spin for a while after each call; a slab handed to a fedcore worker
    then shares a core with a spinning thread and runs at half speed (measured: a softmax
    split over two threads ran 1.2x slower right after a two-thread GEMM, 1.75x faster after a
    one-thread one). So fedcore splits the large products itself too, each slab a one-thread
    BLAS call. False when BLAS threads cannot be set (no threadpoolctl): products are then
    left whole to BLAS and its own threads.
    """
    claimed = _state.get("blas")
    if claimed is None:
        from .blas import set_blas_threads

        claimed = _state["blas"] = set_blas_threads(1)
    return claimed


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`a @ b` for 2-D operands, split over the intra-op threads when it is large.

    The split is over rows of `a` or columns of `b`, whichever is longer, never over the
    shared dimension (no partial sums). As with any multi-threaded BLAS, the last bits of a
    product may still depend on the thread count: BLAS blocks a slab differently.
    """
    (m, k), n = a.shape, b.shape[1]
    claimed = _state.get("blas")
    if claimed is None and get_num_threads() == 1:
        claimed = _claim_blas()  # one fedcore thread: one core, BLAS included
    work = m * n * k
    if not claimed or work < 2 * GEMM_GRAIN:  # BLAS's own threads, or a small product
        return np.matmul(a, b, out=out)
    threads = min(get_num_threads(), max(m, n), work // GEMM_GRAIN)
    if threads < 2:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), np.result_type(a, b))
    if m >= n:
        _split(m, lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), threads)
    else:
        _split(n, lambda lo, hi: np.matmul(a, b[:, lo:hi], out=out[:, lo:hi]), threads)
    return out
