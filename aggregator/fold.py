"""Validation and folding in one pass: each update's norm is taken while it is folded.

``fold_measured`` folds a round's updates into a streaming mean's float32 accumulator,
``acc += w_k * x_k`` (``x_k`` the client's local model, or its delta to the global one), and
takes each update's norm ``||local - global||`` on the way, reading each update from memory
once. The vector is cut into column blocks of ``BLOCK`` elements; every update of the round
passes through one block while that block of the accumulator, of the global model and one
scratch block stay in the core's L2 cache. Per block and update: one subtraction into the
scratch (``out=``, no temporary), a BLAS dot of the scratch for the norm, and the same axpy
kernel the plain fold uses (``aggregator.backend.host_axpy``), all on one BLAS thread. Each
element of the accumulator sums the same products in the same order as the plain fold, so
the result is the plain fold's bit for bit (a refused update is undone by folding again).

``delta_norm`` is the norm alone, for the rules that need it before they fold (robust rules,
differential privacy's clipping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from aggregator.backend import Backend, blas_threads, host_axpy
from aggregator.updates import ClientUpdate, Rejected

BLOCK = 1 << 15  # 32k float32 = 128 kB: the accumulator, global and scratch blocks fit in L2


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
    blocked = acc.dtype == np.float32 and acc.flags.c_contiguous and global_host.dtype == acc.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        if blocked and all(d is not None for d in dense):
            totals = _fold_blocks(acc, updates, dense, weights, global_host)  # type: ignore
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
) -> list[float]:
    """The blocked fold; returns each update's squared norm."""
    size = acc.size
    axpy = host_axpy(size, BLOCK)
    scratch = np.empty(min(size, BLOCK), np.float32)
    local = [u.values is not None for u in updates]
    work = list(zip(dense, [float(w) for w in weights], local, strict=True))
    totals = [0.0] * len(updates)
    subtract, dot = np.subtract, np.dot
    with blas_threads(1, size):
        for lo in range(0, size, BLOCK):
            hi = min(size, lo + BLOCK)
            acc_b, global_b, t = acc[lo:hi], global_host[lo:hi], scratch[: hi - lo]
            for k, (x, weight, is_local) in enumerate(work):
                x_b = x[lo:hi]
                axpy(acc_b, weight, x_b)  # first: BLAS streams x_b from memory into L2
                if is_local:
                    subtract(x_b, global_b, out=t)
                    totals[k] += float(dot(t, t))
                else:
                    totals[k] += float(dot(x_b, x_b))
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
