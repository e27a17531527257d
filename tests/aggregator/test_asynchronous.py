"""Buffered asynchronous aggregation (FedBuff): weights, staleness, equivalence, resume."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.rounds import StopRun
from aggregator.staleness import Staleness, rebase
from aggregator.store import Store, StoreError
from aggregator.updates import ClientUpdate
from simulations.harness import simulate
from simulations.lifecycle import resume_run, run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import ScenarioError, scenario_from_dict
from tests.simulations.run_watch import kill_after_round


def scenario(rounds: int = 3, population: bool = False, **federation) -> dict:
    data = {
        "name": "async",
        "seed": 5,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [16]},
        "federation": {"num_clients": 12, "clients_per_round": 12, "rounds": rounds,
                       **federation},
        "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05, "momentum": 0.9},
    }
    if population:
        data["population"] = {
            "devices": {"android-entry-2gb": 50, "android-flagship": 50},
            "dropout": 0.1,
        }
    return data


def run(data: dict, runtime: str = "inprocess"):
    return simulate(prepare_scenario(scenario_from_dict(data)), runtime=runtime)


def paused_and_resumed(data: dict, tmp_path, at: int = 3):
    """Run ``data`` through (store ``a.db``) and again paused after step ``at`` and resumed
    (store ``b.db``): the uninterrupted result, the resumed one and the resumed run's store."""
    reference = run_scenario(scenario_from_dict(data), store=Store(str(tmp_path / "a.db")))
    store = Store(str(tmp_path / "b.db"))

    def operator(outcome):
        if outcome.number == at:
            store.queue_control(1, "pause")

    with pytest.raises(StopRun, match="paused"):
        run_scenario(scenario_from_dict(data), store=store, on_round=operator)
    return reference, resume_run(store, 1), store


@pytest.mark.parametrize(
    ("rule", "staleness", "expected"),
    [
        (Staleness("constant"), 7, 1.0),
        (Staleness("polynomial", exponent=0.5), 0, 1.0),
        (Staleness("polynomial", exponent=0.5), 3, 0.5),  # (1 + 3) ** -0.5
        (Staleness("polynomial", exponent=1.0), 4, 0.2),  # 1 / 5
        (Staleness("hinge", exponent=0.5, hinge=2), 2, 1.0),
        (Staleness("hinge", exponent=0.5, hinge=2), 6, 1 / 3),  # 1 / (0.5 * 4 + 1)
    ],
)
def test_staleness_weights_match_hand_computation(rule, staleness, expected):
    assert rule.weight(staleness) == pytest.approx(expected, rel=1e-12)


def test_a_stale_update_is_rebased_as_a_weighted_delta():
    base = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    local = np.array([2.0, 2.0, 1.0], dtype=np.float32)
    update = ClientUpdate(num_examples=4, train_loss=0.1, seconds=0.0, bytes_up=12, values=local)
    moved = rebase(update, base, 0.5)
    assert moved.values is None and moved.num_examples == 4
    np.testing.assert_array_equal(moved.delta, np.array([0.5, 0.0, -1.0], dtype=np.float32))


def test_everyone_at_once_with_a_full_buffer_is_synchronous_fedavg_bit_for_bit():
    sync = run(scenario(rounds=3))
    asynchronous = run(scenario(rounds=3, mode="async", concurrency=12, buffer=12))
    for a, b in zip(sync.rounds, asynchronous.rounds, strict=True):
        np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(sync.final, asynchronous.final)


@pytest.mark.slow
def test_the_equivalence_holds_on_flowers_runtime_too():
    data = scenario(rounds=2, mode="async", concurrency=12, buffer=12)
    np.testing.assert_array_equal(run(scenario(rounds=2)).final, run(data, "flower").final)


def test_async_is_deterministic_for_a_seed_with_a_population():
    data = scenario(rounds=5, population=True, mode="async", concurrency=6, buffer=3)
    first, second = run(data), run(data)
    np.testing.assert_array_equal(first.final, second.final)
    clocks = [r.metrics["sim_clock_s"] for r in first.rounds]
    assert clocks == sorted(clocks) and clocks[-1] > 0  # simulated time moves on
    staleness = [c.metrics.get("staleness", 0) for r in first.rounds for c in r.clients]
    assert max(staleness) >= 1  # late devices really contributed stale updates


def test_too_stale_contributions_are_rejected_with_a_reason():
    data = scenario(rounds=4, population=True, mode="async", concurrency=8, buffer=2,
                    max_staleness=0)
    result = run(data)
    reasons = [c.reason for r in result.rounds for c in r.clients if not c.accepted]
    assert any(r and r.startswith("stale: trained from step") for r in reasons)
    accepted = [c for r in result.rounds for c in r.clients if c.accepted]
    assert all(c.metrics["staleness"] == 0 for c in accepted)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "async", "secagg": True}, "federation.mode: SecAgg+ needs a fixed set"),
        ({"mode": "async", "concurrency": 4, "buffer": 5}, "federation.buffer: 5 is more than"),
        ({"mode": "async", "concurrency": 40}, "federation.concurrency: 40 is more than"),
        ({"buffer": 3}, 'federation.buffer: only used with mode = "async"'),
        ({"mode": "later"}, "federation.mode"),
        ({"mode": "async", "staleness": {"kind": "linear"}}, "federation.staleness.kind"),
    ],
)
def test_bad_async_settings_are_one_line_naming_the_key(change, message):
    with pytest.raises(ScenarioError) as caught:
        scenario_from_dict(scenario(**change))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_pause_then_resume_continues_in_flight_clients_bit_for_bit(tmp_path):
    data = scenario(rounds=6, population=True, mode="async", concurrency=6, buffer=3,
                    strategy="fedadam", strategy_options={"eta": 0.01})
    reference, result, _ = paused_and_resumed(data, tmp_path)
    assert [r.number for r in result.rounds] == [4, 5, 6]
    np.testing.assert_array_equal(result.final, reference.final)


@pytest.mark.slow
def test_kill_9_after_a_committed_step_then_resume_gives_the_same_model(tmp_path):
    data = scenario(rounds=8, population=True, mode="async", concurrency=6, buffer=3)
    reference = run_scenario(scenario_from_dict(data), store=Store(str(tmp_path / "a.db")))
    db = tmp_path / "b.db"
    kill_after_round(data, db, 2)  # two steps committed, six to go
    store = Store(str(db))
    stored = len(store.get_run(1).rounds)
    if stored < 8:  # killed mid-run (the usual case): resume continues from the last step
        assert store.get_run(1).status == "running"
        final = resume_run(store, 1).final
    else:
        try:
            final = resume_run(store, 1).final
        except StoreError:
            final = store.load_checkpoint(1)[1].params
    np.testing.assert_array_equal(final, reference.final)
