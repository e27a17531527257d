"""Federated evaluation on Flower's runtime (Ray) and across a kill -9 and resume."""

from __future__ import annotations

import random

import numpy as np
import pytest

from aggregator.store import Store, StoreError
from simulations.lifecycle import resume_run, run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import scenario_from_dict
from tests.simulations.run_watch import kill_after_round
from tests.simulations.test_bring_your_own import check_federated_evaluation

RAW = {
    "name": "fed-eval",
    "seed": 4,
    "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 1.0},
    "model": {"name": "mlp", "hidden": [16]},
    "federation": {"num_clients": 6, "clients_per_round": 3, "rounds": 5},
    "train": {"local_epochs": 3, "batch_size": 32, "learning_rate": 0.05, "momentum": 0.9},
    "evaluation": {"every": 2, "fraction": 0.5, "local_test": 0.25},
}


@pytest.mark.slow
def test_flower_runtime_evaluates_like_the_direct_computation():
    pytest.importorskip("ray", reason="Flower's simulation runtime needs fedcore[sim]")
    prepared = prepare_scenario(scenario_from_dict(RAW))
    local = run_scenario(prepared, "inprocess")
    flower = run_scenario(prepare_scenario(scenario_from_dict(RAW)), "flower")
    assert [r.number for r in flower.rounds if r.evaluation] == [2, 4, 5]
    for a, b in zip(local.rounds, flower.rounds, strict=True):
        if a.evaluation is None:
            assert b.evaluation is None
            continue
        assert [c.client_id for c in a.evaluation.clients] == [
            c.client_id for c in b.evaluation.clients]
        assert [c.metric for c in b.evaluation.clients] == pytest.approx(
            [c.metric for c in a.evaluation.clients], abs=1e-6)
    evaluated = type(flower)(flower.scenario, flower.runtime,
                             [r for r in flower.rounds if r.evaluation], flower.final, 0.0)
    check_federated_evaluation(evaluated, prepared)


def _stored_evaluations(store: Store, run_id: int) -> list:
    return [(r.number, r.evaluation) for r in store.get_run(run_id).rounds]


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_kill_9_then_resume_keeps_every_evaluation(tmp_path, trial):
    # 16 rounds: however fast rounds run, the kill after round 1-3 lands with rounds left
    raw = {**RAW, "federation": {**RAW["federation"], "rounds": 16}}
    reference = Store(str(tmp_path / "ref.db"))
    whole = run_scenario(scenario_from_dict(raw), store=reference)
    db = tmp_path / "runs.db"
    # killed mid-run, evaluated rounds behind it
    status, _ = kill_after_round(raw, db, 1 + trial % 3, random.Random(trial).uniform(0.0, 0.05))
    assert status == "running"
    store = Store(str(db))
    assert store.get_run(1).status == "running"
    try:
        resume_run(store, 1)
    except StoreError as exc:  # killed after the last commit, before "completed"
        assert "already run all" in str(exc)
    np.testing.assert_array_equal(store.load_checkpoint(1)[1].params, whole.final)
    assert _stored_evaluations(store, 1) == _stored_evaluations(reference, whole.run_id)
