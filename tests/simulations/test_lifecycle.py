"""Runs in the store: pause, abort, set, and resume after a stop or a kill -9, bit for bit."""

import os
import random
import signal

import numpy as np
import pytest

from aggregator.rounds import StopRun
from aggregator.store import Store, StoreError
from simulations.lifecycle import resume_run, run_scenario
from simulations.scenario import scenario_from_dict
from tests.simulations.run_watch import kill_after_round


def scenario_dict(strategy: str = "fedavg", rounds: int = 6, local_epochs: int = 1) -> dict:
    """A small run; ``local_epochs=4`` makes its rounds long enough (0.3-1 s) to kill mid-way.
    ``strategy`` "secagg" is FedAvg collected by SecAgg+."""
    secagg = strategy == "secagg"
    federation = {
        "num_clients": 6,
        "clients_per_round": 3,
        "rounds": rounds,
        "strategy": "fedavg" if secagg else strategy,
        "secagg": secagg,
    }
    if strategy == "fedadam":
        federation["strategy_options"] = {"eta": 0.01}
    return {
        "name": f"resume-{strategy}",
        "seed": 11,
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"name": "mlp", "hidden": [16]},
        "federation": federation,
        "train": {
            "local_epochs": local_epochs,
            "batch_size": 32 if local_epochs == 1 else 8,
            "learning_rate": 0.05,
            "momentum": 0.9,
        },
    }


STRATEGIES = ("fedavg", "fedadam", "secagg")  # plain, a server optimizer's state, SecAgg+


def final_params(store: Store, run_id: int) -> np.ndarray:
    return store.load_checkpoint(run_id)[1].params


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs' final models, per strategy."""
    out = {}
    for strategy in STRATEGIES:
        store = Store(str(tmp_path_factory.mktemp(strategy) / "ref.db"))
        result = run_scenario(scenario_from_dict(scenario_dict(strategy)), store=store)
        out[strategy] = result.final
        np.testing.assert_array_equal(final_params(store, result.run_id), result.final)
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
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


KILL_ROUNDS = 12  # rounds left after the kill however fast they run


@pytest.fixture(scope="module")
def long_round_references():
    """Uninterrupted final models of the long-round scenario, per strategy."""
    return {
        strategy: run_scenario(
            scenario_from_dict(scenario_dict(strategy, rounds=KILL_ROUNDS, local_epochs=4))
        ).final
        for strategy in ("fedavg", "fedadam")
    }


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_kill_9_mid_round_then_resume_gives_the_same_model(
    tmp_path, long_round_references, trial
):
    """SIGKILL at a random moment of a running round (after round 1-3 is committed): the run
    is left ``running`` by a dead process, resumes after its last commit, and ends with the
    uninterrupted model."""
    rng = random.Random(trial)
    strategy = "fedadam" if trial % 2 else "fedavg"
    db = tmp_path / "runs.db"
    raw = scenario_dict(strategy, rounds=KILL_ROUNDS, local_epochs=4)
    status, at_kill = kill_after_round(raw, db, 1 + trial % 3, rng.uniform(0.0, 0.1))
    assert status == "running" and at_kill < KILL_ROUNDS
    store = Store(str(db))
    run = store.get_run(1)
    assert run.status == "running"  # killed: no chance to record anything else
    done = len(run.rounds)
    assert at_kill <= done < KILL_ROUNDS  # it was killed with rounds left
    result = resume_run(store, 1)
    assert [r.number for r in result.rounds] == list(range(done + 1, KILL_ROUNDS + 1))  # resumed
    assert store.get_run(1).status == "completed"
    np.testing.assert_array_equal(result.final, long_round_references[strategy])


def test_an_interrupt_pauses_at_the_round_boundary_and_a_second_stops_at_once(
    tmp_path, references
):
    """In-process: a first SIGINT/SIGTERM/SIGHUP during a round lets it commit, then pauses;
    a second raises at once and leaves the run paused at its last commit. Both resume to the
    uninterrupted model."""
    from simulations.interrupts import Interrupts

    store = Store(str(tmp_path / "runs.db"))
    spec = scenario_from_dict(scenario_dict("fedadam"))

    def signal_during(number, *signals):
        def on_round(outcome):  # runs after round `number - 1` is committed
            if outcome.number == number - 1:
                for sig in signals:
                    os.kill(os.getpid(), sig)

        return on_round

    interrupts = Interrupts()
    with interrupts, pytest.raises(StopRun, match=r"paused before round 3 \(SIGTERM\)"):
        run_scenario(spec, store=store, on_round=signal_during(3, signal.SIGTERM),
                     interrupts=interrupts)  # fmt: skip
    assert interrupts.run_id == 1 and store.get_run(1).status == "paused"
    assert len(store.get_run(1).rounds) == 2
    assert signal.getsignal(signal.SIGTERM) is not interrupts._handle  # restored

    interrupts = Interrupts()
    with interrupts, pytest.raises(KeyboardInterrupt):
        resume_run(store, 1, on_round=signal_during(5, signal.SIGHUP, signal.SIGINT),
                   interrupts=interrupts)  # fmt: skip
    run = store.get_run(1)
    assert run.status == "paused" and len(run.rounds) == 4 and "second interrupt" in run.error
    assert interrupts.exit_code == 128 + signal.SIGINT

    result = resume_run(store, 1)
    assert [r.number for r in result.rounds] == [5, 6]
    np.testing.assert_array_equal(result.final, references["fedadam"])


def test_a_plain_keyboard_interrupt_leaves_the_run_paused_not_failed(tmp_path):
    """Ctrl-C without fedcore's handlers (the Python API) still leaves a resumable run."""
    store = Store(str(tmp_path / "runs.db"))

    def ctrl_c(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario_from_dict(scenario_dict()), store=store, on_round=ctrl_c)
    run = store.get_run(1)
    assert run.status == "paused" and run.finished_at is None and len(run.rounds) == 1
    assert [r.number for r in resume_run(store, 1).rounds] == [2, 3, 4, 5, 6]


def test_a_driver_whose_run_was_taken_over_leaves_it_alone(tmp_path):
    """An orphaned driver (a killed SuperLink's ServerApp, stopped after `fedcore server
    --resume` claimed the run) neither pauses the resumed run nor commits into it."""
    from aggregator.store import NotOwner
    from simulations.lifecycle import StoredRun
    from simulations.prepare import prepare_scenario

    store = Store(str(tmp_path / "runs.db"))
    run = StoredRun.create(store, prepare_scenario(scenario_from_dict(scenario_dict())), "x")
    orphan = StoredRun(store, run.run_id, run.prepared, owner="gone:1")

    def interrupted(hooks):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        orphan.drive(interrupted, stopped_by="the ServerApp was stopped")
    assert store.get_run(run.run_id).status == "running"  # still the live driver's

    def commits(hooks):
        hooks.record(run_scenario(scenario_from_dict(scenario_dict(rounds=1))).rounds[0])

    with pytest.raises(NotOwner):
        orphan.drive(commits)
    stored = store.get_run(run.run_id)
    assert (stored.status, stored.owner, stored.rounds) == ("running", run.owner, [])
