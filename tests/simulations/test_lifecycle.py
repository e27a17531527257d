"""Runs in the store: pause, abort, set, and resume after a stop or a kill -9, bit for bit."""

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import StopRun
from aggregator.store import Store, StoreError
from simulations.lifecycle import resume_run, run_scenario
from simulations.scenario import scenario_from_dict

REPO = Path(__file__).resolve().parents[2]


def scenario_dict(strategy: str = "fedavg", rounds: int = 6) -> dict:
    federation = {"num_clients": 6, "clients_per_round": 3, "rounds": rounds, "strategy": strategy}
    if strategy == "fedadam":
        federation["strategy_options"] = {"eta": 0.01}
    return {
        "name": f"resume-{strategy}",
        "seed": 11,
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"name": "mlp", "hidden": [16]},
        "federation": federation,
        "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.05, "momentum": 0.9},
    }


def final_params(store: Store, run_id: int) -> np.ndarray:
    return store.load_checkpoint(run_id)[1].params


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs' final models, per strategy."""
    out = {}
    for strategy in ("fedavg", "fedadam"):
        store = Store(str(tmp_path_factory.mktemp(strategy) / "ref.db"))
        result = run_scenario(scenario_from_dict(scenario_dict(strategy)), store=store)
        out[strategy] = result.final
        np.testing.assert_array_equal(final_params(store, result.run_id), result.final)
    return out


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_pause_then_resume_ends_with_the_uninterrupted_model(tmp_path, references, strategy):
    store = Store(str(tmp_path / "runs.db"))

    def operator(outcome):  # an operator pauses the run during round 2
        if outcome.number == 2:
            store.queue_control(1, "pause")

    with pytest.raises(StopRun, match="paused before round 3"):
        run_scenario(scenario_from_dict(scenario_dict(strategy)), store=store, on_round=operator)
    run = store.get_run(1)
    assert run.status == "paused" and len(run.rounds) == 2
    result = resume_run(store, 1)
    assert [r.number for r in result.rounds] == [3, 4, 5, 6]
    assert store.get_run(1).status == "completed"
    np.testing.assert_array_equal(result.final, references[strategy])
    with pytest.raises(StoreError, match="is completed"):
        resume_run(store, 1)


def test_abort_and_set_take_effect_at_the_round_boundary(tmp_path):
    store = Store(str(tmp_path / "runs.db"))

    def operator(outcome):
        if outcome.number == 1:
            store.queue_control(1, "set", {"learning_rate": 0.01, "clients_per_round": 2})
        if outcome.number == 2:
            store.queue_control(1, "abort")

    seen = []
    with pytest.raises(StopRun, match="aborted"):
        run_scenario(
            scenario_from_dict(scenario_dict()),
            store=store,
            on_round=lambda o: (seen.append(o.num_selected), operator(o)),
        )
    assert seen == [3, 2]  # the new clients_per_round applied from round 2
    run = store.get_run(1)
    assert run.status == "aborted" and run.finished_at is not None
    assert run.config["train"]["learning_rate"] == 0.01  # kept for a later resume
    with pytest.raises(StoreError, match="aborted"):
        store.claim_run(1, "inprocess")


def _wait_for_run(db: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the child has recorded its run (read with sqlite3: opening a Store would migrate)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT count(*) FROM runs").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)


@pytest.mark.parametrize("trial", range(10))
def test_kill_9_at_a_random_moment_then_resume_gives_the_same_model(tmp_path, references, trial):
    strategy = "fedadam" if trial % 2 else "fedavg"
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps(scenario_dict(strategy)))
    db = tmp_path / "runs.db"
    code = (
        "import json, sys\n"
        "from aggregator.store import Store\n"
        "from simulations.lifecycle import run_scenario\n"
        "from simulations.scenario import scenario_from_dict\n"
        "spec = scenario_from_dict(json.load(open(sys.argv[1])))\n"
        "run_scenario(spec, store=Store(sys.argv[2]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(scenario), str(db)], env=env)
    try:
        _wait_for_run(db, proc)
        time.sleep(random.Random(trial).uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    store = Store(str(db))
    run = store.get_run(1)
    if run.status == "completed":  # it finished before the kill: nothing to resume
        final = final_params(store, 1)
    else:
        assert run.status == "running"  # killed: no chance to record anything else
        try:
            final = resume_run(store, 1).final
        except StoreError as exc:  # killed after its last round's commit, before "completed"
            assert "already run all" in str(exc)
            final = final_params(store, 1)
    assert store.get_run(1).status == "completed"
    np.testing.assert_array_equal(final, references[strategy])
