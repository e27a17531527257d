"""Populations, the virtual clock, memory feasibility, FLOP counting and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregator.rounds import StopRun
from aggregator.store import Store
from client_runtime.cost import forward_flops, training_flops
from client_runtime.device import DoesNotFit, train_on_device
from fedcore.models import build_model
from fedcore.settings import TrainSettings
from simulations.clock import DEADLINE, DROPPED, client_time
from simulations.harness import simulate
from simulations.lifecycle import StoredRun, resume_run, run_scenario
from simulations.population import Population, PopulationSection
from simulations.prepare import prepare_scenario
from simulations.reports import write_report
from simulations.scenario import ScenarioError, scenario_from_dict


def scenario(**population):
    raw = {
        "name": "pop",
        "seed": 3,
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"name": "logreg"},
        "federation": {"clients_per_round": 6, "rounds": 2},
        "train": {"batch_size": 16},
        "population": {"size": 30, "devices": {"android-mid": 50, "rpi-zero-2w": 50}},
    }
    raw["population"].update(population)
    return raw


@pytest.mark.parametrize(
    ("change", "key", "text"),
    [
        ({"devices": {"nokia-3310": 100}}, "population.devices.nokia-3310", "unknown device"),
        ({"devices": {"android-mid": 60, "rpi-4-2gb": 30}}, "population.devices", "sum to 100"),
        ({"size": 4}, "population.size", "smaller than federation.clients_per_round"),
        ({"dropout": 1.5}, "population.dropout", "must be <"),
        ({"deadline_s": -1.0}, "population.deadline_s", "must be >"),
        ({"availability": {"kind": "sometimes"}}, "population.availability.kind", ""),
    ],
)
def test_bad_population_is_one_line_naming_the_field(change, key, text):
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(scenario(**change))
    message = str(info.value)
    assert f": {key}: " in message and text in message and "\n" not in message


def test_device_mix_and_availability_follow_the_section():
    section = PopulationSection(
        devices={"android-mid": 70, "rpi-4-2gb": 30},
        availability={"kind": "probability", "probability": 0.5},
    )
    population = Population(section, 10_000, seed=1)
    share = np.bincount(population.device_index(np.arange(10_000))) / 10_000
    assert abs(share[0] - 0.7) < 0.002 and abs(share[1] - 0.3) < 0.002
    available = population.available(1, hour=0.0)
    assert 0.45 < len(available) / 10_000 < 0.55
    assert not np.array_equal(available, population.available(2, hour=0.0))
    charging = Population(
        PopulationSection(devices={"android-mid": 100}, availability={"kind": "charging"}), 1000, 1
    )
    assert len(charging.available(1, hour=23.0)) > len(charging.available(1, hour=14.0)) == 0


def test_flops_are_counted_from_layer_shapes():
    assert forward_flops(build_model("logreg", input_dim=60, num_classes=10), (60,)) == 1200
    cnn = build_model("cnn", num_classes=10, input_shape=[8, 8, 1], channels=[2, 4], hidden=8)
    conv1 = 2 * 8 * 8 * 9 * 1 * 2
    pool1 = 4 * 4 * 2 * 4
    conv2 = 2 * 4 * 4 * 9 * 2 * 4
    pool2 = 2 * 2 * 4 * 4
    dense = 2 * 16 * 8 + 8 + 2 * 8 * 10
    relus = 4 * 4 * 2 + 2 * 2 * 4
    assert forward_flops(cnn, (64,)) == conv1 + pool1 + conv2 + pool2 + dense + relus
    assert training_flops(cnn, (64,), 10, 2) == 3 * 20 * forward_flops(cnn, (64,))


@pytest.mark.slow  # one of the suite's longest runs
def test_a_client_that_does_not_fit_keeps_its_step_halves_its_batch_or_fails():
    model = build_model("cnn", num_classes=10, input_shape=[8, 8, 1], channels=[4, 8], hidden=16)
    x = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    y = np.arange(64) % 10
    from fedcore.engine import get_engine

    budget = get_engine().pool.live_bytes + 60_000  # other tests may hold engine buffers
    node = {"device": "rpi-zero-2w", "memory-budget": budget}
    # the eager step does not fit: the planned (recomputing) step or micro-batches of the
    # same batch may, else the client declines
    def same_step(costs: dict) -> bool:
        return costs["hybrid"] == 1.0 or costs["micro_batch"] >= 1

    try:
        result = train_on_device(model, x, y, TrainSettings(), 0, node)
    except DoesNotFit as exc:
        assert "memory: does not fit rpi-zero-2w" in str(exc)
    else:
        assert same_step(result.costs) and result.costs["batch_size"] == 32
        assert result.costs["peak_bytes"] <= budget
    result = train_on_device(model, x, y, TrainSettings(), 0, {**node, "adapt-batch": True})
    assert result.costs["batch_size"] < 32 or same_step(result.costs)
    assert result.costs["peak_bytes"] <= budget


def test_client_time_uses_the_profile():
    slow, fast = (
        client_time("rpi-zero-2w", 1e9, 1e6, 1e6),
        client_time("iphone-15-pro", 1e9, 1e6, 1e6),
    )
    assert slow.compute_s > fast.compute_s > 0 and slow.energy_j > 0


def test_population_run_records_devices_time_energy_and_reports(tmp_path):
    spec = scenario_from_dict(scenario(dropout=0.2, over_selection=1.5, deadline_s=1e6))
    result = simulate(prepare_scenario(spec))
    assert len(result.rounds) == 2
    clients = [c for r in result.rounds for c in r.clients]
    assert {c.device_class for c in clients} <= {"android-mid", "rpi-zero-2w"}
    assert all(r.num_accepted <= 6 and r.num_selected == 9 for r in result.rounds)
    accepted = [c for c in clients if c.accepted]
    assert all(c.metrics["sim_seconds"] > 0 and c.metrics["energy_j"] > 0 for c in accepted)
    kinds = {c.reason.split(":")[0] for c in clients if c.reason}
    assert kinds <= {"client error", "over-selected"}
    last = result.rounds[-1].metrics
    assert last["sim_clock_s"] > last["sim_round_s"] > 0 and last["available"] == 30
    paths = write_report(result, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2 and set(metrics["device_classes"]) <= {
        "android-mid",
        "rpi-zero-2w",
    }
    assert (tmp_path / "rounds.csv").read_text().startswith("round,selected,accepted")
    pytest.importorskip("matplotlib")
    assert {p.name for p in paths} >= {"accuracy.png", "device_classes.png", "time_breakdown.png"}


@pytest.fixture(scope="module")
def split_deadline():
    """A deadline between the two device classes' simulated round times: every android-mid
    client makes it, every rpi-zero-2w client is late (measured on a run without one)."""
    result = simulate(prepare_scenario(scenario_from_dict(scenario())))
    seconds: dict[str, list[float]] = {}
    for c in (c for r in result.rounds for c in r.clients):
        seconds.setdefault(c.device_class, []).append(c.metrics["sim_seconds"])
    fast, slow = max(seconds["android-mid"]), min(seconds["rpi-zero-2w"])
    assert fast < slow
    return float(np.sqrt(fast * slow))


def test_late_clients_are_rejected_and_draw_energy_until_the_deadline(split_deadline):
    from device_profiles import get_profile

    spec = scenario_from_dict(scenario(deadline_s=split_deadline))
    result = simulate(prepare_scenario(spec))
    late_joules = get_profile("rpi-zero-2w").energy_joules(split_deadline)
    for r in result.rounds:
        late = [c for c in r.clients if c.device_class == "rpi-zero-2w"]
        on_time = [c for c in r.clients if c.device_class == "android-mid"]
        assert late and on_time
        assert all(not c.accepted and DEADLINE in c.reason for c in late)
        for c in late:  # the reason shows its simulated time, which exceeds the deadline
            shown = float(c.reason.split(f"{DEADLINE} (")[1].split(" s > ")[0])
            assert shown > split_deadline
        assert all(c.metrics["energy_j"] == pytest.approx(late_joules) for c in late)
        assert all(c.accepted and c.metrics["sim_seconds"] <= split_deadline for c in on_time)
        assert r.metrics["sim_round_s"] == pytest.approx(split_deadline)  # it waited that long
        drawn = sum(c.metrics["energy_j"] for c in r.clients)
        assert r.metrics["energy_j"] == pytest.approx(drawn)


def test_dropped_and_late_clients_still_count_their_energy(split_deadline):
    spec = scenario_from_dict(
        scenario(dropout=0.5, over_selection=1.5, deadline_s=split_deadline)
    )
    result = simulate(prepare_scenario(spec))
    clients = [c for r in result.rounds for c in r.clients]
    dropped = [c for c in clients if c.reason and DROPPED in c.reason]
    late = [c for c in clients if c.reason and DEADLINE in c.reason]
    assert dropped and late
    assert all(c.metrics["energy_j"] > 0 for c in dropped + late)
    for r in result.rounds:
        drawn = sum(c.metrics.get("energy_j", 0.0) for c in r.clients)
        assert r.metrics["energy_j"] == pytest.approx(drawn)
        assert drawn > sum(c.metrics.get("energy_j", 0.0) for c in r.clients if c.accepted)


def test_resume_restores_the_virtual_clock(tmp_path):
    store = Store(str(tmp_path / "runs.db"))
    raw = scenario()
    raw["federation"]["rounds"] = 3
    spec = scenario_from_dict(raw)

    def operator(outcome):
        if outcome.number == 2:
            store.queue_control(1, "pause")

    with pytest.raises(StopRun):
        run_scenario(spec, store=store, on_round=operator)
    stored = [r.metrics["sim_clock_s"] for r in store.get_run(1).rounds]
    reopened = StoredRun.reopen(store, 1)
    prepared, resume = reopened.prepared, reopened.resume
    assert resume is not None and resume.round == 2
    assert prepared.world is not None and prepared.world.clock.now_s == stored[-1] > 0
    assert len(prepared.world.clock.history) == 2
    result = resume_run(store, 1)
    assert result.rounds[0].metrics["sim_clock_s"] > stored[-1]


def test_deadline_turns_slow_clients_into_rejections():
    spec = scenario_from_dict(scenario(deadline_s=1e-9))
    with pytest.raises(Exception, match="missed the deadline"):
        simulate(prepare_scenario(spec))


def test_generated_population_does_not_need_the_whole_population_in_memory():
    raw = scenario(size=50_000, generate=True)
    raw["data"] = {
        "dataset": "synthetic",
        "partition": "natural",
        "synthetic": {"num_clients": 20, "samples_per_client": 20},
    }
    raw["federation"]["rounds"] = 1
    result = simulate(prepare_scenario(scenario_from_dict(raw)))
    ids = [c.client_id for c in result.rounds[0].clients]
    assert len(ids) == 6 and max(ids) < 50_000


def test_a_runtime_that_numbers_its_own_nodes_is_asked_who_is_who():
    from client_runtime.app import make_client_app
    from simulations.runtimes.inprocess import InProcessGrid

    prepared = prepare_scenario(scenario_from_dict(scenario()))
    world = prepared.world
    assert world is not None
    app = make_client_app(prepared.loader, mods=[world.device_mod()])
    inner = InProcessGrid(app, 30, seed=5)  # random node ids, like Flower's runtime
    grid = world.attach(inner, discover=True)
    directory = world.directory(1)
    assert len(directory) == 30
    assert {directory[c] for c in directory} == set(grid.get_node_ids())
    assert all(world.nodes.client(directory[c]) == c for c in directory)
    context = inner.context(directory[7])
    assert context is not None and context.node_config["partition-id"] == 7
