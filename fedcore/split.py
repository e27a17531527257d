"""Seeded, stratified train/test splits: one function for the server's data and a device's own.

`stratified_split` holds out a share of every stratum (label); `local_split` is the split a
client makes of its own examples for federated evaluation (``[evaluation] local_test``): it
depends only on the client's labels, the share and its id, so it is the same every round, on
every backend and on a device, and a test can compute it directly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["local_split", "stratified_split"]


def stratified_split(
    strata: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into (train, test) so each stratum keeps its share in both.

    The test size is ``round(test_fraction * n)``; it is shared out among strata by largest
    remainder (ties broken at random) so the total is exact even with many small strata.
    Both index arrays are sorted. Deterministic for a seed.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    strata = np.asarray(strata)
    n = len(strata)
    if n < 2:
        raise ValueError(f"cannot split {n} example(s) into train and test")
    rng = np.random.default_rng(seed)
    n_test = min(max(round(test_fraction * n), 1), n - 1)
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    short = n_test - int(take.sum())
    if short > 0:
        # Largest remainder first; a random key breaks ties among equal remainders.
        order = np.lexsort((rng.random(len(values)), -(quota - take)))
        take[order[:short]] += 1
    # Shuffle, then group by stratum (stable sort keeps the shuffle inside each group) and mark
    # the first `take[s]` members of group s as test.
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(inverse.ravel()[shuffled], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - np.repeat(starts, counts)
    test_mask = np.zeros(n, dtype=bool)
    test_mask[grouped[rank < np.repeat(take, counts)]] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def local_split(y: np.ndarray, fraction: float, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices of a client's examples with ``fraction`` held out for local
    evaluation, stratified by label when ``y`` holds one integer label per example."""
    labels = np.asarray(y)
    strata = labels if labels.ndim == 1 and labels.dtype.kind in "iu" else np.zeros(len(labels))
    seed = int(np.random.SeedSequence([int(client_id), 0x10CA1]).generate_state(1)[0])
    return stratified_split(strata, fraction, seed)
