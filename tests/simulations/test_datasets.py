"""Datasets: shapes, dtypes, ranges, the stratified split, determinism, caching, errors."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.datasets import (
    DATASETS,
    Dataset,
    dataset_options,
    load_dataset,
    stratified_split,
    synthetic_client,
)
from simulations.datasets.digits import read_digits_csv


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "files", "loader", "mnist5k", "shakespeare", "synthetic"}
    assert dataset_options("digits") == () == dataset_options("mnist5k")
    assert dataset_options("shakespeare") == ("num_clients", "vocab_size", "seq_len")
    assert set(dataset_options("synthetic")) == {
        "num_clients",
        "alpha",
        "beta",
        "samples_per_client",
        "shared_task",
    }


def test_digits_shapes_dtypes_and_ranges() -> None:
    d = load_dataset("digits")
    assert isinstance(d, Dataset) and d.name == "digits"
    assert d.x_train.shape == (1438, 64) and d.x_test.shape == (359, 64)
    assert d.num_train == 1438 and d.num_test == 359
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.num_classes == 10 and d.input_shape == (64,)
    for x in (d.x_train, d.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) == set(np.unique(d.y_test))
    assert d.groups_train is None and d.groups_test is None


def test_digits_split_is_stratified_and_complete() -> None:
    pixels, labels = read_digits_csv()
    assert pixels.shape == (1797, 64) and pixels.max() == 16
    d = load_dataset("digits", test_fraction=0.25, seed=3)
    per_class = np.bincount(labels, minlength=10)
    test_per_class = np.bincount(d.y_test, minlength=10)
    assert np.all(np.abs(test_per_class - 0.25 * per_class) <= 1)
    assert np.array_equal(np.bincount(d.y_train, minlength=10) + test_per_class, per_class)
    # Train and test together are the whole file, each row once.
    rows = np.concatenate([d.x_train, d.x_test]) * 16
    assert np.array_equal(np.sort(rows.round().astype(np.int64), axis=0), np.sort(pixels, axis=0))


def test_digits_deterministic_and_seed_dependent() -> None:
    a = load_dataset("digits", seed=11)
    b = load_dataset("digits", seed=11)
    c = load_dataset("digits", seed=12)
    assert a is b  # cached: clients in one process share one copy
    fresh = DATASETS["digits"](test_fraction=0.2, seed=11)
    assert np.array_equal(fresh.x_train, a.x_train) and np.array_equal(fresh.y_test, a.y_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_cached_arrays_are_read_only() -> None:
    d = load_dataset("digits")
    with pytest.raises(ValueError):
        d.x_train[0, 0] = 1.0


def test_unknown_dataset_lists_the_known_ones() -> None:
    known = r"\(known: digits, files, loader, mnist5k, shakespeare, synthetic\)"
    with pytest.raises(ValueError, match=rf"unknown dataset 'mnist' {known}"):
        load_dataset("mnist")


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ValueError, match="dataset 'digits' has no option 'alpha'"):
        load_dataset("digits", alpha=1.0)


def test_synthetic_client_shapes_and_determinism() -> None:
    x, y = synthetic_client(3, 1.0, 1.0, 50, seed=7)
    assert x.shape == (50, 60) and x.dtype == np.float32
    assert y.shape == (50,) and y.dtype == np.int64 and y.min() >= 0 and y.max() < 10
    x2, y2 = synthetic_client(3, 1.0, 1.0, 50, seed=7)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = synthetic_client(4, 1.0, 1.0, 50, seed=7)
    x4, _ = synthetic_client(3, 1.0, 1.0, 50, seed=8)
    assert not np.array_equal(x, x3) and not np.array_equal(x, x4)


def test_synthetic_beta_spreads_client_inputs() -> None:
    def spread(beta: float) -> float:
        means = [synthetic_client(k, 0.0, beta, 200, seed=0)[0].mean() for k in range(30)]
        return float(np.std(means))

    assert spread(10.0) > 3 * spread(0.0)


@pytest.mark.slow  # one of the suite's longest runs
def test_synthetic_shared_task_is_learnable_across_clients() -> None:
    # Softmax regression on 300 clients labels 20 other clients far above chance with one
    # shared task; with a task per client (the paper's SYNTHETIC) it stays near 10 %.
    def accuracy(shared: bool) -> float:
        def pool(ids: range) -> tuple[np.ndarray, np.ndarray]:
            parts = [synthetic_client(k, 0.0, 0.0, 100, 3, shared_task=shared) for k in ids]
            x = np.concatenate([p[0] for p in parts])
            return np.c_[x, np.ones(len(x))], np.concatenate([p[1] for p in parts])

        x, y = pool(range(1000, 1300))
        w = np.zeros((x.shape[1], 10))
        for _ in range(100):
            logits = x @ w
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y] -= 1.0
            w -= 0.5 * x.T @ p / len(y)
        x_new, y_new = pool(range(100, 120))
        return float(((x_new @ w).argmax(axis=1) == y_new).mean())

    assert accuracy(True) > 0.6
    assert accuracy(False) < 0.2


def test_synthetic_loader_pools_clients_and_keeps_groups() -> None:
    d = load_dataset("synthetic", 0.2, 5, num_clients=8, samples_per_client=50, alpha=0.5, beta=0.5)
    assert d.name == "synthetic" and d.input_shape == (60,) and d.num_classes == 10
    assert d.num_train + d.num_test == 400 and d.num_test == 80
    assert d.groups_train is not None and d.groups_test is not None
    per_client = np.bincount(d.groups_train, minlength=8)
    assert per_client.min() >= 35  # every client keeps ~80 % of its 50 examples
    # Client 2's pooled examples are exactly what its own generator makes.
    x, y = synthetic_client(2, 0.5, 0.5, 50, seed=5)
    pooled = np.concatenate([d.x_train[d.groups_train == 2], d.x_test[d.groups_test == 2]])
    assert np.array_equal(np.sort(pooled, axis=0), np.sort(x, axis=0))


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_stratified_split_exact_total_with_many_small_strata(fraction) -> None:
    strata = np.random.default_rng(0).integers(0, 300, size=1000)
    train, test = stratified_split(strata, fraction, seed=1)
    assert len(test) == round(fraction * 1000)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1000))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros(10), fraction, seed=0)
