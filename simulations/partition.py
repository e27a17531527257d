"""Split a dataset's training pool among simulated clients.

Every partitioner returns one sorted int64 index array per client; together they use every
example exactly once. They are deterministic for a seed, so a scenario reproduces its clients.

- ``iid``: a uniform random split into near-equal shares.
- ``dirichlet``: label skew as in Hsu et al. 2019 ("Measuring the effects of non-identical data
  distribution") and Flower's ``DirichletPartitioner``: for each class, the share of its
  examples each client gets is drawn from ``Dir(alpha)``. Small alpha: few classes per client;
  large alpha: close to IID.
- ``natural``: the split the data came with (``Dataset.groups_train``, e.g. ``synthetic``).
"""

from __future__ import annotations

import numpy as np

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet", "natural")
DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_RETRIES = 100


def iid_partition(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle all indices and deal them into ``num_clients`` near-equal shares."""
    n = len(labels)
    _check_clients(num_clients, n)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = DEFAULT_MIN_SIZE,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> list[np.ndarray]:
    """Label-skewed split: per class, client shares ~ ``Dir(alpha)``.

    Redraws (up to ``max_retries`` times, from the same seeded generator) until every client has
    at least ``min_size`` examples, then gives up with a ``ValueError`` that says what to change.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_clients(num_clients, n)
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if num_clients * min_size > n:
        raise ValueError(
            f"cannot give each of {num_clients} clients at least {min_size} examples: "
            f"there are only {n}"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max(1, max_retries)):
        owner = np.empty(n, dtype=np.int64)
        for members in by_class:
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            counts = np.diff(np.concatenate(([0], cuts, [len(members)])))
            owner[rng.permutation(members)] = np.repeat(np.arange(num_clients), counts)
        if np.bincount(owner, minlength=num_clients).min() >= min_size:
            return _group(owner, num_clients)
    raise ValueError(
        f"dirichlet partition: no draw in {max(1, max_retries)} gave all {num_clients} clients "
        f"at least {min_size} of {n} examples (alpha={alpha}); raise alpha, lower min_size or "
        "use fewer clients"
    )


def natural_partition(groups: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Client ``k`` gets the examples whose group is ``k`` (the data's own per-client split)."""
    groups = np.asarray(groups)
    _check_clients(num_clients, len(groups))
    if len(groups) and (groups.min() < 0 or groups.max() >= num_clients):
        raise ValueError(f"natural partition: groups must lie in [0, {num_clients})")
    sizes = np.bincount(groups, minlength=num_clients)
    if sizes.min() == 0:
        empty = int(np.argmin(sizes))
        raise ValueError(f"natural partition: client {empty} has no examples")
    return _group(groups.astype(np.int64), num_clients)


def partition(
    labels: np.ndarray,
    scheme: str,
    num_clients: int,
    seed: int,
    alpha: float | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Dispatch to a partitioner by name (one of ``PARTITIONS``).

    ``alpha`` and ``min_size`` are for ``dirichlet`` only; ``groups`` (one client id per
    example) is required by ``natural``.
    """
    if scheme not in PARTITIONS:
        raise ValueError(f"unknown partition {scheme!r} (known: {', '.join(PARTITIONS)})")
    if scheme == "dirichlet":
        if alpha is None:
            raise ValueError("the dirichlet partition needs alpha")
        return dirichlet_partition(labels, num_clients, alpha, seed, min_size=min_size)
    if alpha is not None:
        raise ValueError(f"alpha is only used by the dirichlet partition, not {scheme!r}")
    if scheme == "iid":
        return iid_partition(labels, num_clients, seed)
    if groups is None:
        raise ValueError("the natural partition needs groups (a dataset with its own split)")
    if len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} entries but labels has {len(labels)}")
    return natural_partition(groups, num_clients)


def label_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Matrix (clients x classes) of how many examples of each class each client holds."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def _check_clients(num_clients: int, n: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"more clients than examples: {num_clients} clients, {n} examples")


def _group(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Indices of each owner, ascending (stable sort of the owner ids)."""
    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(np.bincount(owner, minlength=num_clients))[:-1]
    return np.split(order.astype(np.int64), bounds)
