"""The neighbour graph of SecAgg+: a Harary graph H(k, n) over a seeded random ring order.

Bell et al. (CCS 2020) replace the complete graph of SecAgg with a random k-regular graph,
k = O(log n): each client shares keys and masks only with its k neighbours. As in their
construction, the clients are placed on a ring in an order drawn from a seed the server
announces, and each is joined to the k/2 nearest on either side (k even; k >= n - 1 means
the complete graph). The order comes from AES-CTR under a key hashed from the seed, so every
client computes the same graph whatever its numpy version, and a server cannot show
different clients different graphs for the same announced seed and participant list.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedcore.secagg.prg import expand_mask


def ring_order(n: int, seed: bytes) -> np.ndarray:
    """A pseudorandom permutation of ``0..n-1`` determined by ``seed`` alone."""
    key = hashlib.sha256(b"fedcore/secagg/v1/graph" + seed).digest()
    sort_keys = expand_mask(key, 2 * n).view("<u8")
    return np.argsort(sort_keys, kind="stable")


def effective_degree(n: int, k: int) -> int:
    """The degree actually used: k rounded up to even, or n - 1 (complete) when k >= n - 1."""
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    if k < 1:
        raise ValueError(f"degree must be >= 1, got {k}")
    return n - 1 if k + (k % 2) >= n - 1 else k + (k % 2)


def neighbours(n: int, k: int, seed: bytes) -> np.ndarray:
    """Neighbours of every client: an ``(n, effective_degree)`` array of 0-based indices."""
    degree = effective_degree(n, k)
    if degree == n - 1:
        everyone = np.arange(n)
        return np.stack([np.delete(everyone, i) for i in range(n)]) if n > 1 else everyone
    order = ring_order(n, seed)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    half = degree // 2
    offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
    ring = (position[:, None] + offsets[None, :]) % n
    return np.sort(order[ring], axis=1)


def neighbours_of(index: int, n: int, k: int, seed: bytes) -> np.ndarray:
    """Neighbours (0-based, sorted) of client ``index`` alone."""
    degree = effective_degree(n, k)
    if degree == n - 1:
        return np.delete(np.arange(n), index)
    order = ring_order(n, seed)
    position = int(np.flatnonzero(order == index)[0])
    half = degree // 2
    offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
    return np.sort(order[(position + offsets) % n])
