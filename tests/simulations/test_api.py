"""``fedcore.simulate``: a path, a dict or a Scenario; objects passed directly; history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedcore
from aggregator.store import Store
from simulations.scenario import ScenarioError, scenario_from_dict

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"


def small(**changes):
    raw = {
        "name": "api", "seed": 2,
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"name": "mlp", "hidden": [16]},
        "federation": {"num_clients": 4, "rounds": 2},
        "train": {"local_epochs": 1, "learning_rate": 0.05},
        "evaluation": {"local_test": 0.2},
    }
    raw.update(changes)
    return raw


def test_simulate_a_dict_stores_the_run_and_returns_its_history(tmp_path):
    db = str(tmp_path / "api.db")
    run = fedcore.simulate(small(), db=db, report=tmp_path / "report")
    assert run.run_id == 1 and len(run.history) == 2
    last = run.history[-1]
    assert last["round"] == 2 and 0 <= last["test_accuracy"] <= 1
    assert last["federated"]["clients"] == 4 and "p10" in last["federated"]
    stored = Store(db).get_run(run.run_id)
    assert stored.status == "completed" and stored.rounds[-1].evaluation["summary"]
    assert (tmp_path / "report" / "metrics.json").is_file()
    again = fedcore.simulate(scenario_from_dict(small()), db=False)
    assert again.run_id is None
    np.testing.assert_array_equal(again.final_params, run.final_params)


def test_objects_passed_directly():
    from fedcore.nn import Dense, Sequential

    def loader(partition_id, num_partitions, seed):
        rng = np.random.default_rng([seed, partition_id])
        y = rng.integers(0, 2, 30)
        return (rng.normal(size=(30, 3)) + y[:, None]).astype(np.float32), y

    def make_strategy(context=None):
        from aggregator.strategies import PlainStep, Strategy, WeightedMean

        return Strategy("mine", WeightedMean, PlainStep())

    run = fedcore.simulate(
        small(model={"hidden": [8]}),  # a factory's own keys stay; name goes
        model=lambda input_dim, num_classes, seed=0, hidden=(8,): Sequential(
            Dense(input_dim, num_classes, seed=seed)),
        loader=loader, strategy=make_strategy, db=False,
    )
    assert len(run.rounds) == 2 and run.rounds[-1].evaluation.clients
    assert run.result.scenario.model.factory.startswith("api-model-")


def test_a_path_and_bad_input(tmp_path):
    with pytest.raises(ScenarioError, match="federation.rounds: must be > 0"):
        fedcore.simulate(small(federation={"num_clients": 4, "rounds": 0}), db=False)
    with pytest.raises(ScenarioError, match="no such file"):
        fedcore.simulate(tmp_path / "missing.toml", db=False)
    path = tmp_path / "s.toml"
    path.write_text(QUICKSTART.read_text().replace("rounds = 20", "rounds = 1"))
    assert fedcore.simulate(path, db=False, runtime="inprocess").history[0]["round"] == 1
    with pytest.warns(DeprecationWarning, match="runtime="):
        assert fedcore.simulate(path, db=False, backend="inprocess").history[0]["round"] == 1
