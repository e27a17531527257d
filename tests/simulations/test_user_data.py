"""A user's own data: .npz files (natural or pooled), a loader callable, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.datafiles import DataFileError, read_xy
from simulations.datasets import DATA_LOADERS, load_dataset
from simulations.datasets.files import load_files, load_from_loader


def _write_clients(folder, sizes=(30, 40, 50), features=6, classes=3, test=0):
    rng = np.random.default_rng(1)
    folder.mkdir(exist_ok=True)
    for i, n in enumerate(sizes):
        np.savez(folder / f"site-{i}.npz", x=rng.normal(size=(n, features)),
                 y=rng.integers(0, classes, n))
    if test:
        np.savez(folder / "test.npz", x=rng.normal(size=(test, features)),
                 y=rng.integers(0, classes, test))
    return folder


def test_one_file_per_client_is_the_natural_partition(tmp_path):
    folder = _write_clients(tmp_path / "d", test=25)
    data = load_files(0.2, 0, path=str(folder))
    assert data.num_train == 120 and data.num_test == 25 and data.input_shape == (6,)
    assert np.bincount(data.groups_train).tolist() == [30, 40, 50]
    x0, y0 = read_xy(folder / "site-0.npz")
    np.testing.assert_array_equal(data.x_train[data.groups_train == 0], x0)
    np.testing.assert_array_equal(data.y_train[data.groups_train == 0], y0)


def test_without_test_file_each_client_keeps_its_share_held_out(tmp_path):
    folder = _write_clients(tmp_path / "d")
    data = load_dataset("files", 0.2, 3, path=str(folder / "site-*.npz"))
    assert data.num_test == 24
    kept = np.bincount(data.groups_train)  # stratified by client and label: about 80 % each
    assert kept.sum() == 96 and np.all(np.abs(kept - [24, 32, 40]) <= 2)


def test_one_file_is_a_pool_to_partition(tmp_path):
    folder = _write_clients(tmp_path / "d", sizes=(90,))
    data = load_files(0.2, 0, path=str(folder / "site-0.npz"))
    assert data.groups_train is None and data.num_train == 72


def test_regression_targets_are_floats(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(40, 3)), y=rng.normal(size=40))
    data = load_files(0.25, 0, path=str(tmp_path / "r.npz"))
    assert data.regression and not data.sequence_targets and data.num_classes == 1
    assert data.y_train.dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x": np.ones((3, 2))}, "missing 'y'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(2, int)}, "x has 3 rows and y 2"),
        ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, "x must hold numbers"),
        ({"x": np.array([[1.0], None], dtype=object), "y": np.zeros(2, int)}, "object arrays"),
        ({"x": np.full((2, 2), np.nan), "y": np.zeros(2, int)}, "must be finite"),
        ({"x": np.ones((2, 2)), "y": -np.ones(2, int)}, "negative label"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFileError) as info:
        load_files(0.2, 0, path=str(path))
    assert needle in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_files_must_agree_on_shapes(tmp_path):
    folder = _write_clients(tmp_path / "d")
    np.savez(folder / "site-9.npz", x=np.ones((5, 7)), y=np.zeros(5, int))
    with pytest.raises(DataFileError, match="site-9.npz: rows of shape"):
        load_files(0.2, 0, path=str(folder))
    with pytest.raises(DataFileError, match="no .npz files"):
        load_files(0.2, 0, path=str(tmp_path / "empty-*.npz"))


LOADERS = """
import numpy as np

def load(partition_id, num_partitions, seed):
    rng = np.random.default_rng(seed * 1000 + partition_id)
    n = 20 + partition_id
    return rng.normal(size=(n, 4)), rng.integers(0, 2, n)

def mismatched(partition_id, num_partitions, seed):
    return np.ones((5, 4)), np.zeros(4, dtype=int)

def not_a_tuple(partition_id, num_partitions, seed):
    return np.ones((5, 4))

def raises(partition_id, num_partitions, seed):
    raise KeyError("no such shard")
"""


def test_loader_from_a_package_on_sys_path(user_code):
    user_code("userdata", {"loaders": LOADERS})
    data = load_from_loader(0.2, 7, loader="userdata.loaders:load", num_clients=3)
    assert data.num_train + data.num_test == 20 + 21 + 22
    assert data.groups_train is not None and set(data.groups_train.tolist()) == {0, 1, 2}


def test_loader_from_an_entry_point(user_code):
    user_code("epdata", {"loaders": LOADERS},
              entry_points={"fedcore.datasets": {"my-sites": "epdata.loaders:load"}})
    assert "my-sites" in DATA_LOADERS.names()
    data = load_from_loader(0.2, 7, loader="my-sites", num_clients=2)
    assert data.num_train + data.num_test == 41


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("mismatched", "(partition 0): x has 5 rows and y 4"),
        ("not_a_tuple", "must return a tuple (x, y), got ndarray"),
        ("raises", "raised KeyError: 'no such shard'"),
        ("nothing", "'userdata2.loaders' has no 'nothing'"),
    ],
)
def test_bad_loaders_are_one_line_errors(user_code, name, needle):
    user_code("userdata2", {"loaders": LOADERS})
    with pytest.raises(ValueError) as info:
        load_from_loader(0.2, 0, loader=f"userdata2.loaders:{name}", num_clients=2)
    assert needle in str(info.value) and "\n" not in str(info.value)
