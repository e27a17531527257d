"""Interrupting ``fedcore server`` never costs a deployed run: a real SuperLink, two devices.

One run of three rounds is interrupted three times, by each signal, and then resumed to the
end with ``fedcore server SCENARIO --resume 1``:

1. SIGINT during round 2 (the ServerApp logged that it started; round 1 is committed): the
   pause is passed on to the ServerApp, round 2 is finished and committed, exit 3.
2. SIGTERM to the resumed server while it waits for devices (none is running): paused at
   once, nothing lost, exit 3.
3. SIGHUP, then SIGINT, during round 3: the second signal stops everything at once, exit 130;
   the run is paused at round 2.

The finished run's model equals ``fedcore simulate``'s of the same scenario, bit for bit.

The devices are stock SuperNodes (``--stock-supernode``): the last phase resumes on the same
SuperLink state, whose node list still shows the devices' old nodes online for up to two
heartbeat intervals; a stock SuperNode carries on as its node, while the lean agent cannot
activate its node again until that entry lapses, and the resumed ServerApp's discovery gets
"Node Unavailable" from both (seen 2026-12-07; the lean agent after a SuperLink restart with
fresh state: ``test_faults.py``).
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import Store
from tests.deploy.fleet import example, loopback_address, needs_flower
from tests.simulations.run_watch import committed

pytestmark = [pytest.mark.slow, needs_flower]


def wait_for_text(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} in {path}"
        time.sleep(0.1)


def test_interrupted_server_resumes_to_the_simulated_model(fleet, tmp_path):
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    rng = random.Random(12)
    scenario = tmp_path / "digits.toml"
    scenario.write_text(example(rounds=3))
    address = loopback_address()
    db = tmp_path / "runs.db"
    hint = f"`fedcore server {scenario} --resume 1` continues it"

    def flwr_log(logs: str) -> Path:
        return tmp_path / logs / "flwr-run.log"

    def server(phase: str, logs: str, *extra: str):
        """``fedcore server`` keeping its SuperLink's state in ``logs``: devices a SuperLink
        knows rejoin it after a restart; a fresh one knows no stale devices."""
        return fleet.server(
            phase, scenario, address, db, "--connect-timeout", "120", "--round-timeout", "120",
            "--logs", str(tmp_path / logs), *extra, devices=None,
        )  # fmt: skip

    def clients():
        return [
            fleet.device(
                f"client{i}", address, "--stock-supernode", "--dataset", "digits",
                "--partition-id", str(i), "--num-partitions", "2", "--max-wait", "120",
            )  # fmt: skip
            for i in range(2)
        ]

    # 1. SIGINT during round 2: paused at the boundary after round 2 is committed.
    first = server("a", "logs-a")
    fleet.wait_for("a", "waiting for 2 device(s)", first, timeout=90)
    devices = clients()
    wait_for_text(flwr_log("logs-a"), "fedcore round 2 starts", timeout=180)
    time.sleep(rng.uniform(0.0, 1.0))
    assert committed(db) == ("running", 1) and first.poll() is None  # round 2 is running
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 3, fleet.output("a")
    assert committed(db) == ("paused", 2), fleet.output("a")
    assert hint in fleet.output("a") and "Traceback" not in fleet.output("a")

    # 2. SIGTERM to the resumed server while it waits for devices (none is running).
    for device in devices:
        device.send_signal(signal.SIGTERM)
    for i, device in enumerate(devices):
        assert device.wait(timeout=60) == 130, fleet.output(f"client{i}")
    waiting = server("b", "logs-b", "--resume", "1")
    wait_for_text(flwr_log("logs-b"), "resuming run 1 after round 2")
    assert committed(db) == ("running", 2)
    waiting.send_signal(signal.SIGTERM)
    assert waiting.wait(timeout=60) == 3, fleet.output("b")
    assert committed(db) == ("paused", 2), fleet.output("b")
    assert hint in fleet.output("b")

    # 3. SIGHUP then SIGINT during round 3: stopped at once, paused at round 2.
    third = server("c", "logs-cd", "--resume", "1")
    fleet.wait_for("c", "waiting for 2 device(s)", third, timeout=90)
    clients()
    wait_for_text(flwr_log("logs-cd"), "fedcore round 3 starts", timeout=180)
    time.sleep(rng.uniform(0.0, 1.0))
    assert committed(db) == ("running", 2) and third.poll() is None  # round 3 is running
    third.send_signal(signal.SIGHUP)
    time.sleep(rng.uniform(0.05, 0.5))
    third.send_signal(signal.SIGINT)
    assert third.wait(timeout=60) == 130, fleet.output("c")
    assert committed(db) == ("paused", 2), fleet.output("c")
    assert "paused at its last committed round" in fleet.output("c") and hint in fleet.output("c")

    # Resumed to the end on the same SuperLink state (the devices rejoin by themselves): the
    # simulated model, bit for bit.
    last = server("d", "logs-cd", "--resume", "1")
    assert last.wait(timeout=240) == 0, fleet.output("d")
    summary = json.loads(fleet.output("d").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 3
    store = Store(str(db))
    assert sorted(r.number for r in store.get_run(1).rounds) == [1, 2, 3]
    deployed = store.load_checkpoint(1)[1].params
    np.testing.assert_array_equal(deployed, run_scenario(load_scenario(scenario)).final)
