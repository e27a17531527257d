"""A real deployment on loopback: ``fedcore server`` (a flower-superlink and ``flwr run``) and
two ``fedcore client`` devices (lean agents), as separate processes, offline
(`tests.deploy.fleet`).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from aggregator.store import Store
from tests.deploy.fleet import EXAMPLE, example, loopback_address, needs_flower

pytestmark = [pytest.mark.slow, needs_flower]  # real SuperLink and SuperNode processes


def test_two_devices_train_a_scenario_on_a_real_superlink(fleet, tmp_path):
    start = time.perf_counter()
    address = loopback_address()
    db = tmp_path / "runs.db"
    server = fleet.server(
        "server", EXAMPLE, address, db, "--connect-timeout", "60", "--round-timeout", "60",
        "--logs", str(tmp_path / "server-logs"), timeout=60,
    )  # fmt: skip
    clients = [
        fleet.device(
            f"client{i}", address, "--dataset", "digits", "--partition-id", str(i),
            "--num-partitions", "2", "--device", "rpi-4-2gb", "--max-wait", "2",
            "--logs", str(tmp_path / f"client{i}-logs"),
        )  # fmt: skip
        for i in range(2)
    ]
    assert server.wait(timeout=150) == 0, fleet.output("server")
    seconds = time.perf_counter() - start

    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["runtime"] == "deployment"
    assert summary["rounds"] == 2 and summary["final_test_accuracy"] > 0.85

    store = Store(str(db))
    run = store.get_run(summary["run_id"])
    assert [r.number for r in run.rounds] == [1, 2]
    assert all(r.num_accepted == 2 for r in run.rounds)
    assert {c.device_class for r in run.rounds for c in r.clients} == {"rpi-4-2gb"}
    assert run.rounds[-1].test_accuracy == summary["final_test_accuracy"]

    # the SuperLink is gone: each device notices within --max-wait and leaves by itself
    for i, client in enumerate(clients):
        assert client.wait(timeout=30) == 0, fleet.output(f"client{i}")
        assert "left the federation" in fleet.output(f"client{i}")

    logs = [tmp_path / "server-logs" / "superlink.log", tmp_path / "server-logs" / "flwr-run.log"]
    logs += [tmp_path / f"client{i}-logs" / "agent.log" for i in range(2)]  # the lean agent
    for log in logs:
        text = log.read_text(errors="replace")
        assert "uv sync" not in text and "Installing dependencies" not in text, log
    per_round = ", ".join(f"{r.seconds:.1f}" for r in run.rounds)
    print(f"deployment: 2 rounds in {seconds:.1f} s (rounds: {per_round} s)")


def test_secure_aggregation_over_a_real_deployment_gives_the_simulated_model(fleet, tmp_path):
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    scenario = tmp_path / "secagg.toml"
    scenario.write_text(example(num_clients=3, clients_per_round=3, rounds=1, secagg=True))
    address = loopback_address()
    server = fleet.server(
        "server", scenario, address, tmp_path / "runs.db", "--connect-timeout", "60",
        devices=3, timeout=60,
    )  # fmt: skip
    for i in range(3):
        fleet.device(
            f"client{i}", address, "--dataset", "digits", "--partition-id", str(i),
            "--num-partitions", "3", "--max-wait", "2",
        )  # fmt: skip
    assert server.wait(timeout=150) == 0, fleet.output("server")
    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 1
    deployed = Store(str(tmp_path / "runs.db")).load_checkpoint(summary["run_id"])[1].params
    spec = load_scenario(scenario)
    simulated = run_scenario(spec)
    assert summary["final_test_accuracy"] == simulated.final_accuracy > 0.7
    np.testing.assert_array_equal(deployed, simulated.final)  # the same masked sum, bit for bit
    federation = spec.federation.model_copy(update={"secagg": False})
    plain = spec.model_copy(update={"federation": federation})
    assert not np.array_equal(run_scenario(plain).final, deployed)  # fixed point: it was SecAgg
