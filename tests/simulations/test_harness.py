"""End-to-end: a short simulation learns, is reproducible, and is stored."""

import numpy as np
import pytest

from aggregator.store import Store
from simulations.lifecycle import run_scenario
from simulations.prepare import PartitionLoader
from simulations.scenario import scenario_from_dict


def small_scenario(**federation):
    return scenario_from_dict(
        {
            "name": "small",
            "seed": 3,
            "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
            "model": {"name": "mlp", "hidden": [32]},
            "federation": {"num_clients": 8, "clients_per_round": 4, "rounds": 4, **federation},
            "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05, "momentum": 0.9},
        }
    )


def test_inprocess_simulation_learns_and_is_reproducible(tmp_path):
    store = Store(str(tmp_path / "runs.db"))
    first = run_scenario(small_scenario(), "inprocess", store=store)
    second = run_scenario(small_scenario(), "inprocess")
    assert first.final_accuracy > 0.6  # chance is 0.1
    assert first.rounds[-1].test_accuracy > first.rounds[0].test_accuracy - 0.05
    np.testing.assert_array_equal(first.final, second.final)
    assert [r.train_loss for r in first.rounds] == [r.train_loss for r in second.rounds]

    run = store.get_run(first.run_id)
    assert run.status == "completed"
    assert [r.number for r in run.rounds] == [1, 2, 3, 4]
    assert all(len(r.clients) == 4 for r in run.rounds)
    assert run.rounds[-1].test_accuracy == pytest.approx(first.final_accuracy)


def test_failed_run_is_marked_failed(tmp_path):
    from aggregator.rounds import RoundFailed

    store = Store(str(tmp_path / "runs.db"))
    scenario = small_scenario()
    scenario.train.__dict__["learning_rate"] = 1e30  # updates overflow to inf: all rejected
    with pytest.raises(RoundFailed, match="no update was accepted"):
        run_scenario(scenario, "inprocess", store=store)
    run = store.list_runs()[0]
    assert run.status == "failed" and "no update was accepted" in run.error


def test_partition_loader_pickles_without_its_cache():
    import pickle

    loader = PartitionLoader(
        {"name": "digits", "test_fraction": 0.2, "seed": 0}, [np.arange(5), np.arange(5, 9)]
    )
    x, y = loader(1)
    assert x.shape == (4, 64) and y.shape == (4,)
    clone = pickle.loads(pickle.dumps(loader))
    assert clone._cache == {}
    np.testing.assert_array_equal(clone(1)[1], y)
    with pytest.raises(ValueError, match="out of range"):
        loader(2)
