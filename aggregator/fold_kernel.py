"""The validating fold's compiled kernel (numba): one pass over each update's block.

``fold_block`` folds every update of a round into one column block of the float32
accumulator, ``acc += w_k * x_k``, and takes each update's squared norm on the block,
``sum((x_k - center)^2)`` (``x_k`` a local model; a delta is squared as it is), in one loop
over ``x_k``: a fused multiply-add for the fold (BLAS ``saxpy``'s own operation where it
fuses, as OpenBLAS's kernels do on FMA hardware, so the accumulator gets the plain fold's bits
there) and a float64 sum of squares. The caller runs it block-outer, update-inner: the block
of the accumulator and of the center stay in the core's caches while the updates stream from
memory once. Only the sum of squares may be split into vector lanes (``reassoc`` on its add
alone, ``_plus_square``): an update's sum is the same bits for the same block and place in its
group of four, whatever thread runs it. The fold's adds keep their order (``contract`` only
fuses a multiply into its add), and nothing else is relaxed (NaN and inf propagate: the caller
refuses such an update).

The updates and the center are passed by address (the caller has checked that each is a
C-contiguous float32 vector of the accumulator's length and keeps them alive), so one
compiled signature serves read-only message buffers and writable arrays alike; numba's
on-disk cache (``cache=True``) pays the compilation (about 2 s) once per machine. Imported
only on the server, and only when a large vector is folded (``aggregator.fold``).
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
def _plus_square(total: float, d: float) -> float:  # pragma: no cover - compiled
    """``total + d * d``, a sum the vectorizer may split into lanes (``reassoc``)."""
    return total + d * d


@njit(nogil=True, cache=True, fastmath={"contract"})
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
    elements; ``weights``: float32; ``local``: uint8.

    Four updates go through the block side by side (their four streams in flight, the
    accumulator read and written once for the four), each element's sum still taken in
    update order, ``(((acc + w0 x0) + w1 x1) + w2 x2) + w3 x3``: the bits of four saxpys in
    turn. The last updates (fewer than four) go one at a time."""
    n = hi - lo
    a = acc[lo:hi]
    c = carray(_pointer(center_address + ITEM * lo), (n,), np.float32)
    m = addresses.size
    k = 0
    while k + 4 <= m:
        x0 = carray(_pointer(addresses[k] + ITEM * lo), (n,), np.float32)
        x1 = carray(_pointer(addresses[k + 1] + ITEM * lo), (n,), np.float32)
        x2 = carray(_pointer(addresses[k + 2] + ITEM * lo), (n,), np.float32)
        x3 = carray(_pointer(addresses[k + 3] + ITEM * lo), (n,), np.float32)
        w0, w1, w2, w3 = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
        l0, l1, l2, l3 = local[k] != 0, local[k + 1] != 0, local[k + 2] != 0, local[k + 3] != 0
        s0 = s1 = s2 = s3 = 0.0
        for i in range(n):
            ci = np.float64(c[i])
            v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
            d0 = np.float64(v0) - (ci if l0 else 0.0)
            d1 = np.float64(v1) - (ci if l1 else 0.0)
            d2 = np.float64(v2) - (ci if l2 else 0.0)
            d3 = np.float64(v3) - (ci if l3 else 0.0)
            s0 = _plus_square(s0, d0)
            s1 = _plus_square(s1, d1)
            s2 = _plus_square(s2, d2)
            s3 = _plus_square(s3, d3)
            a[i] = (((a[i] + w0 * v0) + w1 * v1) + w2 * v2) + w3 * v3
        squares[k], squares[k + 1], squares[k + 2], squares[k + 3] = s0, s1, s2, s3
        k += 4
    while k < m:
        x = carray(_pointer(addresses[k] + ITEM * lo), (n,), np.float32)
        w, centered = weights[k], local[k] != 0
        s = 0.0
        for i in range(n):
            v = x[i]
            d = np.float64(v) - (np.float64(c[i]) if centered else 0.0)
            s = _plus_square(s, d)
            a[i] += w * v
        squares[k] = s
        k += 1
