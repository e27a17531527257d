"""Protocol parameters n, k, t and how their defaults follow from n and the tolerated fractions.

n clients take part; each shares its secrets with its k graph neighbours, any t of whom can
reconstruct them. Given the fraction ``dropout`` (delta) of clients that may drop out and the
fraction ``corruption`` (gamma) that may collude with the server, and targets of 2^-sigma for
a privacy failure and 2^-eta for a correctness failure (an aborted round) per round:

* **Random graph** (k < n - 1, Bell et al. CCS 2020). A client's k neighbours are (close to)
  a uniform k-subset; the number of them that drop out or are corrupt is hypergeometric,
  bounded by the binomial tail, and a union bound over the n clients gives

  - correctness: ``n * P[Bin(k, delta) > k - t] <= 2^-eta`` (every client keeps >= t
    surviving neighbours to hand in its shares);
  - privacy: ``n * P[Bin(k, gamma) >= t] <= 2^-sigma`` (no honest client has t corrupt
    neighbours, who with the server could rebuild both its secrets);
  - connectivity: ``n * (delta + gamma)^(k/2) <= 2^-sigma`` (the honest survivors stay one
    connected component of the ring graph, so the server learns only their total: the ring
    splits only when k/2 consecutive clients are all lost or corrupt).

  t balances the two: it maximises min(privacy bits / sigma, correctness bits / eta). The
  default k is the smallest even k for which that t meets both targets.
* **Complete graph** (k = n - 1, Bonawitz et al. CCS 2017), used when no k < n - 1 works
  (small n). Worst-case counts replace probabilities: with D = floor(delta * n) dropouts and
  C = floor(gamma * n) corrupt clients, t = k - D, which must exceed C.

Defaults: delta = 0.1, gamma = 0.05, sigma = 40, eta = 20. For n = 100 that gives k = 36,
t = 19; for n = 1000, k = 38, t = 20 (k grows like log n: n = 10^4 needs k = 42); n <= 34
uses the complete graph (n = 20: k = 19, t = 17). An explicit k or t is honoured and
``security_log2`` / ``correctness_log2`` report the bounds achieved: k = 20 ~ 2 log2(n) for
n = 1000 gets t = 10, with bounds 2^-16.4 (privacy) and 2^-10.5 (aborts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedcore.secagg.graph import effective_degree

DEFAULT_DROPOUT = 0.1
DEFAULT_CORRUPTION = 0.05
DEFAULT_SECURITY_BITS = 40
DEFAULT_CORRECTNESS_BITS = 20


@dataclass(frozen=True)
class SecAggParams:
    """Round parameters: n clients, k neighbours each (n - 1: complete), threshold t."""

    n: int
    k: int
    t: int
    security_log2: float = float("-inf")  # log2 of the privacy-failure bound
    correctness_log2: float = float("-inf")  # log2 of the abort-probability bound

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError("secure aggregation needs at least 2 clients")
        if not 1 <= self.k <= self.n - 1:
            raise ValueError(f"k = {self.k} must be in 1..{self.n - 1}")
        if not self.k // 2 < self.t <= self.k:
            raise ValueError(
                f"t = {self.t} must be in {self.k // 2 + 1}..k ({self.k}): a threshold t <= k/2 "
                "would let a server collect both secrets of one client"
            )

    @property
    def complete(self) -> bool:
        """Whether every client neighbours every other (classic SecAgg)."""
        return self.k == self.n - 1


def _tail(k: int, p: float, at_least: int) -> float:
    """P[Bin(k, p) >= at_least]."""
    if at_least <= 0:
        return 1.0
    return math.fsum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(at_least, k + 1))


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else float("-inf")


def _bounds(n: int, k: int, t: int, dropout: float, corruption: float) -> tuple[float, float]:
    """(log2 privacy bound, log2 correctness bound) of a random-graph choice."""
    privacy = n * max(_tail(k, corruption, t), (dropout + corruption) ** (k // 2))
    correctness = n * _tail(k, dropout, k - t + 1)
    return _log2(min(privacy, 1.0)), _log2(min(correctness, 1.0))


def _balanced_t(
    n: int, k: int, dropout: float, corruption: float, sigma: float, eta: float
) -> tuple[int, float, float]:
    """The t in k/2 < t <= k whose worse bound, in units of its target, is best (ties: larger
    t). Clients refuse t <= k/2 (``SecAggParams``), so it is never offered."""
    best: tuple[float, int, float, float] | None = None
    for t in range(k // 2 + 1, k + 1):
        security, correctness = _bounds(n, k, t, dropout, corruption)
        score = min(-security / sigma, -correctness / eta)
        if best is None or score >= best[0]:
            best = (score, t, security, correctness)
    assert best is not None
    return best[1], best[2], best[3]


def derive_params(
    n: int,
    dropout: float = DEFAULT_DROPOUT,
    corruption: float = DEFAULT_CORRUPTION,
    security_bits: float = DEFAULT_SECURITY_BITS,
    correctness_bits: float = DEFAULT_CORRECTNESS_BITS,
    k: int | None = None,
    t: int | None = None,
) -> SecAggParams:
    """Choose k and t for n clients (see the module docstring); explicit k, t win."""
    if not (0 <= dropout < 1 and 0 <= corruption < 1):
        raise ValueError("dropout and corruption are fractions in [0, 1)")
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    if k is None:
        for candidate in range(2, n - 1, 2):
            _, security, correctness = _balanced_t(
                n, candidate, dropout, corruption, security_bits, correctness_bits
            )
            if security <= -security_bits and correctness <= -correctness_bits:
                k = candidate
                break
        else:
            k = n - 1
    k = effective_degree(n, k)
    if k == n - 1:
        return _complete(n, dropout, corruption, t)
    if t is None:
        t, security, correctness = _balanced_t(
            n, k, dropout, corruption, security_bits, correctness_bits
        )
    else:
        security, correctness = _bounds(n, k, t, dropout, corruption)
    return SecAggParams(n, k, t, security, correctness)


def _complete(n: int, dropout: float, corruption: float, t: int | None) -> SecAggParams:
    k = n - 1
    dropped, corrupt = math.floor(dropout * n), math.floor(corruption * n)
    if t is None:
        t = k - dropped
        if t <= corrupt or 2 * t <= k:
            raise ValueError(
                f"n = {n} clients cannot tolerate {dropped} dropouts and {corrupt} corrupt "
                f"clients at once (need k - dropouts > corrupt and > k/2)"
            )
    # Worst case is deterministic: privacy holds iff t > C, correctness iff t <= k - D.
    security = float("-inf") if t > corrupt else 0.0
    correctness = float("-inf") if t <= k - dropped else 0.0
    return SecAggParams(n, k, t, security, correctness)
