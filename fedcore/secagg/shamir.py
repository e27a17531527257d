"""Shamir secret sharing of 32-byte secrets over the prime field GF(65537), in numpy.

A secret (an X25519 private key or a self-mask seed) is read as 16 little-endian 16-bit
chunks; each chunk is shared with its own random polynomial of degree ``threshold - 1`` over
GF(p), p = 65537 = 2^16 + 1 (a Fermat prime, so every 16-bit chunk is a field element). Any
``threshold`` shares give the polynomials back by Lagrange interpolation at 0; fewer reveal
nothing, whatever the field size (information-theoretic), since every coefficient is drawn
uniformly from GF(p) by rejection from the OS CSPRNG. Share holders are the points
x = 1..65536 (a participant's 1-based index), so a round may have up to 65536 clients.

Products of two field elements are < 2^34, so int64 arithmetic never overflows, and every
operation here is vectorised over secrets, share holders and chunks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PRIME = 65537
CHUNKS = 16
SECRET_BYTES = 2 * CHUNKS
MAX_HOLDERS = PRIME - 1


def _uniform(count: int) -> np.ndarray:
    """``count`` independent uniform elements of GF(p) (int64)."""
    words = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.int64)
    # 2^32 - 1 = 65535 * p: every word below it maps to a field element uniformly.
    bad = words == 0xFFFFFFFF
    while bad.any():  # pragma: no cover - probability 2^-32 per word
        words[bad] = np.frombuffer(os.urandom(4 * int(bad.sum())), dtype="<u4")
        bad = words == 0xFFFFFFFF
    return words % PRIME


def _check_points(xs: np.ndarray) -> None:
    if xs.size and (xs.min() < 1 or xs.max() > MAX_HOLDERS):
        raise ValueError(f"share points must lie in 1..{MAX_HOLDERS}")


def split(secrets: Sequence[bytes], xs: Sequence[int], threshold: int) -> np.ndarray:
    """Share each 32-byte secret among the points ``xs``; ``threshold`` shares recover it.

    Returns an array of shape ``(len(secrets), len(xs), CHUNKS)`` (uint32, values < p): row
    ``[i, j]`` is the share of secret ``i`` held by point ``xs[j]``.
    """
    points = np.asarray(xs, dtype=np.int64)
    _check_points(points)
    if len(set(points.tolist())) != len(points):
        raise ValueError("share points must be distinct")
    if not 1 <= threshold <= max(len(points), 1):
        raise ValueError(f"threshold {threshold} must be in 1..{len(points)}")
    for secret in secrets:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    m = len(secrets)
    constant = np.frombuffer(b"".join(secrets), dtype="<u2").astype(np.int64).reshape(m, 1, CHUNKS)
    coeffs = _uniform(m * (threshold - 1) * CHUNKS).reshape(m, threshold - 1, CHUNKS)
    x = points.reshape(1, -1, 1)
    acc = np.zeros((m, len(points), CHUNKS), dtype=np.int64)
    for degree in range(threshold - 2, -1, -1):  # Horner, highest coefficient first
        acc = (acc + coeffs[:, degree : degree + 1, :]) * x % PRIME
    return ((acc + constant) % PRIME).astype(np.uint32)


def _inverse(values: np.ndarray) -> np.ndarray:
    """Elementwise inverse in GF(p) (Fermat: v^(p-2)), vectorised square-and-multiply."""
    result = np.ones_like(values)
    base = values % PRIME
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        exponent >>= 1
    return result


def lagrange_at_zero(xs: np.ndarray) -> np.ndarray:
    """Lagrange coefficients for evaluating at 0 from points ``xs`` (shape ``(m, t)``)."""
    xs = np.asarray(xs, dtype=np.int64)
    _check_points(xs)
    m, t = xs.shape
    num = np.ones((m, t), dtype=np.int64)
    den = np.ones((m, t), dtype=np.int64)
    for other in range(t):
        xo = xs[:, other : other + 1]
        same = np.arange(t) == other
        num = num * np.where(same, 1, xo) % PRIME
        den = den * np.where(same, 1, (xo - xs) % PRIME) % PRIME
    if (den == 0).any():
        raise ValueError("share points of one secret must be distinct")
    return num * _inverse(den) % PRIME


def reconstruct(xs: np.ndarray, shares: np.ndarray) -> list[bytes | None]:
    """Recover secrets from ``shares[i, j]`` held by points ``xs[i, j]`` (t shares each).

    ``xs`` is ``(m, t)``, ``shares`` ``(m, t, CHUNKS)``. A secret whose interpolated chunks
    are not all 16-bit values cannot be genuine (a tampered share) and comes back as None;
    other tampering is caught by the caller's check against a public key or commitment.
    """
    xs = np.asarray(xs, dtype=np.int64)
    values = np.asarray(shares, dtype=np.int64)
    if values.shape != (*xs.shape, CHUNKS):
        raise ValueError(f"shares have shape {values.shape}, expected {(*xs.shape, CHUNKS)}")
    if (values < 0).any() or (values >= PRIME).any():
        raise ValueError("share values must be field elements (< 65537)")
    lam = lagrange_at_zero(xs)
    chunks = (lam[:, :, None] * values % PRIME).sum(axis=1) % PRIME
    out: list[bytes | None] = []
    for row in chunks:
        out.append(None if (row > 0xFFFF).any() else row.astype("<u2").tobytes())
    return out
