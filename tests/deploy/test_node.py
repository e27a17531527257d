"""A device's node config: parsing, checks, and the data it names (vendored shard or .npz)."""

import numpy as np
import pytest

from deploy.node import NodeConfigError, NodeData, dataset_shard, load_npz, scenario_table
from simulations.prepare import prepare_scenario
from simulations.scenario import load_scenario
from tests.deploy.fleet import EXAMPLE


def run_config() -> dict:
    return {"scenario": EXAMPLE.read_text()}


def test_a_shard_is_the_one_the_simulation_gives_that_client():
    prepared = prepare_scenario(load_scenario(EXAMPLE))
    for pid in range(2):
        node = NodeData.parse({"dataset": "digits", "partition-id": pid, "num-partitions": 2})
        x, y = node.load(run_config())
        x_sim, y_sim = prepared.loader(pid)
        np.testing.assert_array_equal(x, x_sim)
        np.testing.assert_array_equal(y, y_sim)


def test_num_partitions_defaults_to_the_scenarios_clients_and_may_differ():
    default = NodeData.parse({"dataset": "digits", "partition-id": 1}).load(run_config())
    _, y2 = NodeData.parse({"dataset": "digits", "partition-id": 1, "num-partitions": 2}).load(
        run_config()
    )
    assert len(default[1]) == len(y2)
    _, y4 = NodeData.parse({"dataset": "digits", "partition-id": 3, "num-partitions": 4}).load(
        run_config()
    )
    assert abs(len(y4) - len(y2) / 2) <= 1


def test_the_node_takes_the_scenario_as_text_never_as_a_path():  # issue 13, finding 7
    node = NodeData.parse({"dataset": "digits", "partition-id": 0})
    x, _ = node.load({"scenario": EXAMPLE.read_text()})
    assert x.dtype == np.float32 and len(x) > 0
    with pytest.raises(NodeConfigError, match="not a path"):
        node.load({"scenario": str(EXAMPLE)})


@pytest.mark.parametrize(
    "config, needle",
    [
        ({}, "exactly one of"),
        ({"dataset": "digits", "data": "x.npz", "partition-id": 0}, "exactly one of"),
        ({"dataset": "digits"}, "needs 'partition-id'"),
        ({"dataset": "digits", "partition-id": 2, "num-partitions": 2}, "out of range 0..1"),
        ({"dataset": "digits", "partition-id": -1}, ">= 0"),
        ({"dataset": "digits", "partition-id": "three"}, "must be an integer"),
        ({"dataset": "digits", "partition-id": 0, "num-partitions": 0}, ">= 1"),
    ],
)
def test_bad_node_configs_name_the_key(config, needle):
    with pytest.raises(NodeConfigError, match=needle):
        NodeData.parse(config)


def test_check_names_unknown_data_sets_devices_and_files(tmp_path):
    with pytest.raises(NodeConfigError, match="unknown data set 'cifar'"):
        NodeData.parse({"dataset": "cifar", "partition-id": 0}).check()
    with pytest.raises(NodeConfigError, match="unknown device 'toaster'"):
        NodeData.parse({"dataset": "digits", "partition-id": 0, "device": "toaster"}).check()
    with pytest.raises(NodeConfigError, match="no such file"):
        NodeData.parse({"data": str(tmp_path / "missing.npz")}).check()
    NodeData.parse({"dataset": "digits", "partition-id": 0, "device": "rpi-4-2gb"}).check()


def test_a_node_must_hold_the_data_set_the_run_trains_on():
    node = NodeData.parse({"dataset": "mnist5k", "partition-id": 0})
    with pytest.raises(NodeConfigError, match="holds 'mnist5k' but the run trains on 'digits'"):
        node.load(run_config())
    with pytest.raises(NodeConfigError, match="no 'scenario'"):
        dataset_shard(node, None)
    too_far = NodeData.parse({"dataset": "digits", "partition-id": 5})
    with pytest.raises(NodeConfigError, match="the run has 2 partitions"):
        too_far.load(run_config())


def test_npz_files_give_float32_rows_and_int64_labels(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.ones((5, 64)), y=np.arange(5, dtype=np.int32))
    x, y = NodeData.parse({"data": str(path)}).load({})
    assert x.dtype == np.float32 and x.shape == (5, 64) and y.dtype == np.int64


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"x": np.ones((3, 2))}, "missing 'y'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(2, dtype=int)}, "x has 3 rows and y 2"),
        ({"x": np.ones((2, 2)), "y": np.array(["a", "b"])}, "y must hold numbers"),
        ({"x": np.array([[1], "a"], dtype=object), "y": np.zeros(2, int)}, "object arrays"),
    ],
)
def test_bad_npz_files_say_what_is_wrong(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(NodeConfigError, match=needle):
        load_npz(path)


def test_a_file_that_is_not_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(NodeConfigError, match="not a readable .npz"):
        load_npz(path)


def test_scenario_table_reads_text_and_rejects_bad_toml():
    assert scenario_table({"scenario": 'name = "a"\n'}) == {"name": "a"}
    assert scenario_table({}) is None
    with pytest.raises(NodeConfigError, match="invalid TOML"):
        scenario_table({"scenario": "name = \n"})
