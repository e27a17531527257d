"""The validating fold's compiled kernel (numba): one pass over each update's block.

``fold_block`` folds every update of a round into one column block of the float32
accumulator, ``acc += w_k * x_k``, and takes each update's squared norm on the block,
``sum((x_k - center)^2)`` (``x_k`` a local model; a delta is squared as it is), in one loop
over ``x_k``: a fused multiply-add for the fold (BLAS ``saxpy``'s own operation, so the
accumulator gets the plain fold's bits where that kernel fuses too, as OpenBLAS's do on
FMA hardware) and a float64 sum of squares. The loop runs block-outer, update-inner: the
block of the accumulator and of the center stay in the core's caches while the updates
stream from memory once. The reduction may be reordered into vector lanes (``reassoc``), so
a block's sum is the same bits for the same block on the same machine whatever thread runs
it; nothing else is relaxed (NaN and inf propagate: the caller refuses such an update).

The updates and the center are passed by address (the caller has checked that each is a
C-contiguous float32 vector of the accumulator's length and keeps them alive), so one
compiled signature serves read-only message buffers and writable arrays alike; numba's
on-disk cache (``cache=True``) pays the compilation once per machine. Imported only on the
server, only when a large vector is folded (``aggregator.fold``); never on a device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _pointer(typingctx: Any, address: Any) -> Any:
    """An integer address as a ``void*`` (for ``carray``)."""
    signature = types.voidptr(types.intp)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return signature, codegen


ITEM = 4  # bytes of a float32


@njit(nogil=True, cache=True, fastmath={"contract", "reassoc"})
def fold_block(
    acc: np.ndarray,
    center_address: int,
    addresses: np.ndarray,
    weights: np.ndarray,
    local: np.ndarray,
    lo: int,
    hi: int,
    squares: np.ndarray,
) -> None:  # pragma: no cover - compiled (its Python body is never run)
    """``acc[lo:hi] += weights[k] * x_k[lo:hi]`` for each update ``k`` in order, and
    ``squares[k]`` = its block's float64 sum of ``(x_k - center)^2`` (``x_k^2`` where
    ``local[k]`` is 0: a delta). ``addresses``: int64 addresses of the updates' first
    elements; ``weights``: float32."""
    n = hi - lo
    a = acc[lo:hi]
    c = carray(_pointer(center_address + ITEM * lo), (n,), np.float32)
    for k in range(addresses.size):
        x = carray(_pointer(addresses[k] + ITEM * lo), (n,), np.float32)
        w = weights[k]
        s = 0.0
        if local[k]:
            for i in range(n):
                v = x[i]
                d = np.float64(v) - np.float64(c[i])
                s += d * d
                a[i] += w * v
        else:
            for i in range(n):
                v = x[i]
                s += np.float64(v) * np.float64(v)
                a[i] += w * v
        squares[k] = s
