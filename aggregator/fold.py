"""Validation and folding in one pass: each update's norm is taken while it is folded.

``fold_measured`` folds a round's updates into a streaming mean's float32 accumulator,
``acc += w_k * x_k`` (``x_k`` the client's local model, or its delta to the global one), and
takes each update's norm ``||local - global||`` on the way, reading each update from memory
once. The vector is cut into column blocks of ``BLOCK`` elements; every update of the round
passes through one block while that block of the accumulator, of the global model and one
scratch block stay in the core's caches. Per block and update: one subtraction into the
scratch (``out=``, no temporary), a BLAS dot of the scratch for the norm, and the same axpy
kernel the plain fold uses (``aggregator.backend.host_axpy``: BLAS's saxpy, here called by
address, ``cblas_saxpy``), all on one BLAS thread. Each element of the accumulator sums the
same products in the same order as the plain fold, so the result is the plain fold's bit for
bit (a refused update is undone by folding again).

On one core this costs about 1.6x the plain fold (the subtraction and the dot run at cache
speed; measured here, by time on a core: 0.37-0.39x read bandwidth with the norms, 0.6x
without), so the fold can share the blocks out among ``backend.threads`` threads
(``$FEDCORE_AGG_THREADS``): each thread takes the next block not yet taken and alone writes
that part of the accumulator, with its own scratch; every kernel releases the GIL (the saxpy
is called through ctypes: SciPy's wrapper holds the GIL, and two threads took turns). Each
block's dots are kept and summed in block order at the end, so accumulator and norms are the
same bits whatever the thread count and timing. Unlike BLAS threads, these wait without
spinning.

``delta_norm`` is the norm alone, for the rules that need it before they fold (robust rules,
differential privacy's clipping).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from aggregator.backend import BLAS_MIN_SIZE, Backend, blas_threads, cblas_saxpy, host_axpy
from aggregator.updates import ClientUpdate, Rejected
from fedcore.cblas import address

# 128k float32 = 512 kB a block: its accumulator, global and scratch blocks (1.5 MB) sit in L2
# and L3 while the updates stream through. Measured on a busy machine by time on a core (wall
# less run-queue waits; 1 MB L2 a core, 32 MB L3; 100 x 1M float32 with norms; x read
# bandwidth on one / two threads): 32k 0.34 / 0.57, 64k (fits L2) 0.37 / 0.60, 128k 0.39 /
# 0.64-0.69, 192k 0.39 / 0.58-0.60. Larger blocks make fewer calls (Python time under the GIL,
# which the threads share).
BLOCK = 1 << 17
MIN_BLOCKS_PER_THREAD = 2  # below this a thread costs more than it brings


def _dense(update: ClientUpdate) -> np.ndarray | None:
    """The update's dense float32, contiguous array (local values or delta), else None."""
    dense = update.values if update.values is not None else update.delta
    if dense is None or dense.dtype != np.float32 or not dense.flags.c_contiguous:
        return None
    return dense


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
        and acc.flags.c_contiguous
        and global_host.dtype == acc.dtype
        and global_host.shape == acc.shape
        and all(d is not None and d.shape == acc.shape for d in dense)
    )
    with np.errstate(over="ignore", invalid="ignore"):
        if blocked:
            totals = _fold_blocks(acc, updates, dense, weights, global_host, backend.threads)  # type: ignore
        else:  # sparse (top-k) or unusual arrays: the norm, then the plain fold
            totals = [_norm2(u, global_host) for u in updates]
            for update, weight in zip(updates, weights, strict=True):
                update.fold(backend, acc, weight)
    for update, total in zip(updates, totals, strict=True):
        update.norm = _norm(update, total)
    return [0.0 if u.values is not None else w for u, w in zip(updates, weights, strict=True)]


def _fold_blocks(
    acc: np.ndarray,
    updates: Sequence[ClientUpdate],
    dense: list[np.ndarray],
    weights: Sequence[float],
    global_host: np.ndarray,
    threads: int,
) -> list[float]:
    """The blocked fold; returns each update's squared norm. With ``threads`` > 1 each thread
    takes the next block not yet taken (so a thread the OS holds back is made up for by the
    others; numpy's subtraction and dot, and BLAS's saxpy called by address, release the GIL);
    every block's dots land in their own row and are summed in block order after, so the
    result does not depend on the thread count or on timing."""
    size, item = acc.size, acc.itemsize
    blocks = -(-size // BLOCK)
    threads = max(1, min(threads, blocks // MIN_BLOCKS_PER_THREAD))
    work = [
        (x, address(x), float(w), u.values is not None)
        for x, w, u in zip(dense, weights, updates, strict=True)
    ]
    dots = [[0.0] * len(work) for _ in range(blocks)]  # dots[block][update]
    saxpy = cblas_saxpy() if size >= BLAS_MIN_SIZE else None  # by address: no GIL, no views
    acc_address = address(acc)

    claimed, lock = iter(range(blocks)), threading.Lock()

    def next_block() -> int | None:
        with lock:
            return next(claimed, None)

    def fold_run() -> None:
        axpy = host_axpy(size, BLOCK)  # its own scratch per thread
        scratch = np.empty(min(size, BLOCK), np.float32)
        subtract, dot = np.subtract, np.dot
        while (b := next_block()) is not None:
            lo, hi, row = b * BLOCK, min(size, (b + 1) * BLOCK), dots[b]
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
        if threads == 1:
            fold_run()
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="fedcore-fold") as pool:
                for run in [pool.submit(fold_run) for _ in range(threads)]:
                    run.result()
    totals = [0.0] * len(work)
    for row in dots:  # block order, whatever the threads: the same sums bit for bit
        for k, d in enumerate(row):
            totals[k] += d
    return totals


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
