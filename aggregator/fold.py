"""Validation and folding in one pass: each update's norm is taken while it is folded.

``fold_measured`` folds a round's updates into a streaming mean's float32 accumulator,
``acc += w_k * x_k`` (``x_k`` the client's local model, or its delta to the global one), and
takes each update's norm ``||local - global||`` on the way, reading each update from memory
once. The vector is cut into column blocks of ``BLOCK`` elements; every update of the round
passes through one block (block-outer, update-inner) while that block of the accumulator and
of the global model stay in the core's caches, so only the updates stream from memory.

Per block, one compiled call (``aggregator.fold_kernel``, numba, a server dependency) reads
each update's block once, four updates side by side: saxpy's fused multiply-add into the
accumulator, in update order, and a float64 sum of squares of ``x_k - global`` for the norm.
Where numba is missing or its kernel does not build (or the vector is below
``BLAS_MIN_SIZE``, whose plain fold is a product then a sum) the same blocks go through numpy,
three calls a block and update: a subtraction into a scratch (``out=``, no temporary), a BLAS
dot of it (float32) and the plain fold's own axpy kernel (``aggregator.backend.host_axpy``:
BLAS's saxpy called by address, ``cblas_saxpy``) on one BLAS thread, which gives the plain
fold's bits. The compiled kernel's fused multiply-add is the operation OpenBLAS's saxpy runs on
FMA hardware (measured equal bit for bit here); its norms are float64 sums where numpy's are
float32 dots (equal to rounding). A refused update is undone by folding the round again without
it through the same path, so the model is exactly as if it had never been offered.

The blocks can be shared out among ``backend.threads`` threads (``$FEDCORE_AGG_THREADS``):
each thread takes the next block not yet taken and alone writes that part of the
accumulator; the compiled kernel and numpy's and BLAS's kernels release the GIL (the saxpy is
called through ctypes: SciPy's wrapper holds the GIL). Each block's sums of squares are kept
and added in block order at the end, so accumulator and norms are the same bits whatever the
thread count and timing. Unlike BLAS threads, these wait without spinning.

``delta_norm`` is the norm alone, for the rules that need it before they fold (robust rules,
differential privacy's clipping).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

from aggregator.backend import BLAS_MIN_SIZE, Backend, blas_threads, cblas_saxpy, host_axpy
from aggregator.updates import ClientUpdate, Rejected
from fedcore.cblas import address

log = logging.getLogger(__name__)

# 128k float32 = 512 kB a block: its accumulator and global blocks (1 MB) sit in L2 while the
# updates stream through. The compiled kernel ran about as fast from 64k to 256k (busy machine,
# CPU time of one thread); the numpy path makes fewer calls with larger blocks (Python time
# under the GIL, which the threads share); smaller ones leave the threads more blocks to share.
BLOCK = 1 << 17
MIN_BLOCKS_PER_THREAD = 2  # below this a thread costs more than it brings

NextBlock = Callable[[], "int | None"]


def _dense(update: ClientUpdate) -> np.ndarray | None:
    """The update's dense float32, contiguous array (local values or delta), else None."""
    dense = update.values if update.values is not None else update.delta
    if dense is None or dense.dtype != np.float32 or not dense.flags.c_contiguous:
        return None
    return dense


@cache
def compiled_kernel() -> Callable[..., None] | None:
    """``aggregator.fold_kernel.fold_block``, compiled (or loaded from numba's cache) and run
    once on a small block; None where numba is not installed or the kernel fails to build or
    to cache (no writable cache folder), and then the numpy path folds (the reason logged
    once)."""
    try:
        from aggregator.fold_kernel import fold_block

        acc, center = np.zeros(8, np.float32), np.ones(8, np.float32)
        squares = np.zeros(1)
        fold_block(acc, address(center), np.array([address(center)], np.int64),
                   np.ones(1, np.float32), np.ones(1, np.uint8), 0, 8, squares)  # fmt: skip
        if not (np.array_equal(acc, center) and squares[0] == 0.0):
            raise ArithmeticError(f"probe folded {acc.tolist()}, squares {squares.tolist()}")
    except ImportError as exc:  # numba is not installed (quietly) or cannot load: numpy folds
        if exc.name not in ("numba", "llvmlite"):  # e.g. "Numba needs NumPy 2.5 or less"
            log.warning("the compiled fold kernel is unusable (%s); folding with numpy", exc)
        return None
    except Exception as exc:  # noqa: BLE001 - any build failure: fold with numpy instead
        log.warning("the compiled fold kernel is unusable (%s); folding with numpy", exc)
        return None
    return fold_block


def fold_measured(
    acc: np.ndarray,
    updates: Sequence[ClientUpdate],
    weights: Sequence[float],
    global_host: np.ndarray,
    backend: Backend,
) -> list[float]:
    """``acc += weights[k] * update_k`` for each update in order (``acc`` and ``global_host``
    host vectors; numpy's ``backend`` folds what cannot be blocked), setting each update's
    ``norm`` (NaN when it holds a NaN or inf, inf when its norm overflows: the caller refuses
    it and folds again without it). Returns each update's coefficient of the global model
    (``ClientUpdate.fold``'s)."""
    dense = [_dense(u) for u in updates]
    blocked = (  # the blocked fold reads by address: every vector of the accumulator's shape
        acc.dtype == np.float32
        and acc.ndim == 1
        and acc.flags.c_contiguous
        and global_host.dtype == acc.dtype
        and global_host.flags.c_contiguous
        and global_host.shape == acc.shape
        and all(d is not None and d.shape == acc.shape for d in dense)
    )
    with np.errstate(over="ignore", invalid="ignore"):
        if blocked:
            kernel = compiled_kernel() if acc.size >= BLAS_MIN_SIZE else None
            arrays = (acc, updates, dense, weights, global_host, backend.threads)
            if kernel is not None:
                squares = _fold_compiled(*arrays, kernel)  # type: ignore[arg-type]
            else:
                squares = _fold_numpy(*arrays)  # type: ignore[arg-type]
            totals = _in_block_order(squares)
        else:  # sparse (top-k) or unusual arrays: the norm, then the plain fold
            totals = [_norm2(u, global_host) for u in updates]
            for update, weight in zip(updates, weights, strict=True):
                update.fold(backend, acc, weight)
    for update, total in zip(updates, totals, strict=True):
        update.norm = _norm(update, total)
    return [0.0 if u.values is not None else w for u, w in zip(updates, weights, strict=True)]


def _in_threads(blocks: int, threads: int, run: Callable[[NextBlock], None]) -> None:
    """``run(next_block)`` on up to ``threads`` threads (fewer when there are too few blocks
    to share), each taking the next block not yet taken until none is left: a thread the OS
    holds back is made up for by the others."""
    threads = max(1, min(threads, blocks // MIN_BLOCKS_PER_THREAD))
    claimed, lock = iter(range(blocks)), threading.Lock()

    def next_block() -> int | None:
        with lock:
            return next(claimed, None)

    if threads == 1:
        run(next_block)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="fedcore-fold") as pool:
        for running in [pool.submit(run, next_block) for _ in range(threads)]:
            running.result()


def _in_block_order(squares: np.ndarray) -> list[float]:
    """Each update's squared norm: its blocks' sums added in block order, whatever thread
    took which block (the same bits for any thread count)."""
    totals = [0.0] * squares.shape[1]
    for row in squares.tolist():
        for k, s in enumerate(row):
            totals[k] += s
    return totals


def _fold_compiled(
    acc: np.ndarray,
    updates: Sequence[ClientUpdate],
    dense: list[np.ndarray],
    weights: Sequence[float],
    global_host: np.ndarray,
    threads: int,
    kernel: Callable[..., None],
) -> np.ndarray:
    """The blocked fold, one compiled call a block (every update through it); returns each
    block's float64 sums of squares, ``squares[block, update]``."""
    size = acc.size
    blocks = -(-size // BLOCK)
    addresses = np.array([address(x) for x in dense], np.int64)  # ``dense`` keeps them alive
    factors = np.array(weights, np.float32)  # saxpy's float32 weight
    local = np.array([u.values is not None for u in updates], np.uint8)
    squares = np.zeros((blocks, len(dense)))
    center = address(global_host)

    def fold_run(next_block: NextBlock) -> None:
        while (b := next_block()) is not None:
            hi = min(size, (b + 1) * BLOCK)
            kernel(acc, center, addresses, factors, local, b * BLOCK, hi, squares[b])

    _in_threads(blocks, threads, fold_run)
    return squares


def _fold_numpy(
    acc: np.ndarray,
    updates: Sequence[ClientUpdate],
    dense: list[np.ndarray],
    weights: Sequence[float],
    global_host: np.ndarray,
    threads: int,
) -> np.ndarray:
    """The blocked fold with numpy's subtraction and dot and BLAS's saxpy called by address
    (all release the GIL), three calls a block and update; returns each block's sums of
    squares (float32 dots), ``squares[block, update]``."""
    size, item = acc.size, acc.itemsize
    blocks = -(-size // BLOCK)
    work = [
        (x, address(x), float(w), u.values is not None)
        for x, w, u in zip(dense, weights, updates, strict=True)
    ]
    squares = np.zeros((blocks, len(work)))
    saxpy = cblas_saxpy() if size >= BLAS_MIN_SIZE else None  # by address: no GIL, no views
    acc_address = address(acc)

    def fold_run(next_block: NextBlock) -> None:
        axpy = host_axpy(size, BLOCK)  # its own scratch per thread
        scratch = np.empty(min(size, BLOCK), np.float32)
        subtract, dot = np.subtract, np.dot
        while (b := next_block()) is not None:
            lo, hi, row = b * BLOCK, min(size, (b + 1) * BLOCK), squares[b]
            acc_b, global_b, t = acc[lo:hi], global_host[lo:hi], scratch[: hi - lo]
            n, offset = hi - lo, lo * item
            for k, (x, x_address, weight, is_local) in enumerate(work):
                x_b = x[lo:hi]
                # first the axpy: BLAS streams the block of x from memory into the cache
                if saxpy is not None:
                    saxpy(n, weight, x_address + offset, 1, acc_address + offset, 1)
                else:
                    axpy(acc_b, weight, x_b)
                if is_local:
                    subtract(x_b, global_b, out=t)
                    row[k] = float(dot(t, t))
                else:
                    row[k] = float(dot(x_b, x_b))

    with blas_threads(1, size):
        _in_threads(blocks, threads, fold_run)
    return squares


def _norm2(update: ClientUpdate, global_vector: np.ndarray) -> float:
    """``||local - global||^2`` block by block (float32 dots summed as Python floats, as the
    fold takes it; inf or NaN when it overflows or the update is not finite)."""
    if update.sparse is not None:
        return _sum_squares(update.sparse[1])
    if update.delta is not None:
        return _sum_squares(update.delta)
    v = update.values
    assert v is not None
    total, scratch = 0.0, np.empty(min(v.size, BLOCK), np.result_type(v.dtype, global_vector.dtype))
    for lo in range(0, v.size, BLOCK):
        t = scratch[: min(BLOCK, v.size - lo)]
        np.subtract(v[lo : lo + t.size], global_vector[lo : lo + t.size], out=t)
        total += float(np.dot(t, t))
    return total


def _sum_squares(x: np.ndarray) -> float:
    return sum(
        float(np.dot(x[lo : lo + BLOCK], x[lo : lo + BLOCK])) for lo in range(0, x.size, BLOCK)
    )


def _norm(update: ClientUpdate, total: float) -> float:
    """The norm from its square: NaN if the update holds a NaN or inf, inf if it overflows."""
    if math.isfinite(total):
        return math.sqrt(total)
    data = update.values if update.values is not None else update.delta
    data = data if data is not None else update.sparse[1]  # type: ignore[index]
    return math.inf if bool(np.isfinite(data).all()) else math.nan


def delta_norm(update: ClientUpdate, global_vector: np.ndarray) -> float:
    """``||local - global||`` in one blocked pass, set on the update; ``Rejected`` for NaN/inf
    values or an overflowing norm."""
    with np.errstate(over="ignore", invalid="ignore"):
        update.norm = _norm(update, _norm2(update, global_vector))
    if math.isnan(update.norm):
        raise Rejected("non-finite values (NaN or inf)")
    if math.isinf(update.norm):
        raise Rejected("update norm overflows (oversized values)")
    return update.norm
