"""Partitioners: complete, disjoint, deterministic, skewed as asked, and loud when impossible."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.partition import (
    PARTITIONS,
    dirichlet_partition,
    iid_partition,
    label_counts,
    natural_partition,
    partition,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2000 labels, 200 per class, shuffled."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(NUM_CLASSES), 200))


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype == np.int64 for p in parts)
    assert sum(len(p) for p in parts) == n
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(n))  # each index exactly once


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    counts = label_counts(labels, parts, NUM_CLASSES).astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return float(h.mean())


SCHEMES = [
    ("iid", lambda y, k, s: iid_partition(y, k, s)),
    ("dirichlet", lambda y, k, s: dirichlet_partition(y, k, 0.5, s)),
    ("dispatch-dirichlet", lambda y, k, s: partition(y, "dirichlet", k, s, alpha=1.0)),
]


@pytest.mark.parametrize(("name", "split"), SCHEMES, ids=[s[0] for s in SCHEMES])
@pytest.mark.parametrize("num_clients", [1, 7, 20])
def test_every_index_used_exactly_once(labels, name, split, num_clients) -> None:
    parts = split(labels, num_clients, 0)
    assert len(parts) == num_clients
    _assert_exact_cover(parts, len(labels))


@pytest.mark.parametrize(("name", "split"), SCHEMES, ids=[s[0] for s in SCHEMES])
def test_deterministic_per_seed_and_different_across_seeds(labels, name, split) -> None:
    a, b, c = split(labels, 10, 5), split(labels, 10, 5), split(labels, 10, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_shares_are_balanced(labels) -> None:
    sizes = [len(p) for p in iid_partition(labels, 7, 0)]
    assert max(sizes) - min(sizes) <= 1


def test_small_alpha_is_much_more_skewed_than_large_alpha_and_iid(labels) -> None:
    h_small = _mean_label_entropy(labels, dirichlet_partition(labels, 20, 0.1, 0, min_size=5))
    h_large = _mean_label_entropy(labels, dirichlet_partition(labels, 20, 100.0, 0))
    h_iid = _mean_label_entropy(labels, iid_partition(labels, 20, 0))
    uniform = np.log(NUM_CLASSES)
    assert h_iid > 0.95 * uniform
    assert h_large > 0.9 * uniform
    assert h_small < 0.5 * h_large  # few classes per client


def test_min_size_is_respected(labels) -> None:
    parts = dirichlet_partition(labels, 20, 0.5, 0, min_size=30)
    assert min(len(p) for p in parts) >= 30
    _assert_exact_cover(parts, len(labels))


def test_min_size_unreachable_after_retries_is_a_clear_error(labels) -> None:
    with pytest.raises(ValueError, match="no draw in 3 gave all 50 clients at least 35"):
        dirichlet_partition(labels, 50, 0.05, 0, min_size=35, max_retries=3)


def test_min_size_impossible_is_rejected_up_front(labels) -> None:
    with pytest.raises(ValueError, match="only 2000"):
        dirichlet_partition(labels, 300, 1.0, 0, min_size=10)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_more_clients_than_examples(scheme) -> None:
    labels = np.arange(5) % 2
    with pytest.raises(ValueError, match="more clients than examples: 6 clients, 5 examples"):
        partition(labels, scheme, 6, 0, alpha=1.0 if scheme == "dirichlet" else None, min_size=0)


def test_one_example_per_client_is_fine() -> None:
    parts = iid_partition(np.zeros(5, dtype=np.int64), 5, 0)
    assert [len(p) for p in parts] == [1] * 5


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dirichlet_alpha_must_be_positive(labels, alpha) -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet_partition(labels, 5, alpha, 0)


def test_natural_partition_follows_groups() -> None:
    groups = np.array([2, 0, 1, 0, 2, 2])
    parts = natural_partition(groups, 3)
    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4, 5]]
    with pytest.raises(ValueError, match="client 3 has no examples"):
        natural_partition(groups, 4)


def test_dispatcher_checks_its_arguments(labels) -> None:
    assert PARTITIONS == ("iid", "dirichlet", "natural")
    with pytest.raises(ValueError, match=r"unknown partition 'shards' \(known: iid, dirichlet"):
        partition(labels, "shards", 5, 0)
    with pytest.raises(ValueError, match="dirichlet partition needs alpha"):
        partition(labels, "dirichlet", 5, 0)
    with pytest.raises(ValueError, match="only used by the dirichlet"):
        partition(labels, "iid", 5, 0, alpha=0.5)
    with pytest.raises(ValueError, match="needs groups"):
        partition(labels, "natural", 5, 0)
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        partition(labels, "iid", 0, 0)
