"""Devices outlive their SuperLink: a paused run resumed with ``fedcore server --resume`` goes
on with the same devices, started once (real processes on loopback).

The devices run Flower's stock SuperNode (``fedcore client --stock-supernode``), which
``fedcore client`` supervises: the new SuperLink refuses the node its SuperNode had, which
exits and is replaced; one that stopped serving without exiting (an error it does not retry,
from a SuperLink that was stopping) is replaced too (``tests/cli/test_client_supervisor.py``).
The lean agent's way back after a SuperLink restart is ``tests/deploy/test_faults.py``'s.
"""

from __future__ import annotations

import json
import time

import pytest

from aggregator.store import Store
from tests.deploy.fleet import example, loopback_address, needs_flower

pytestmark = [pytest.mark.slow, needs_flower]


def test_devices_wait_for_a_resumed_server(fleet, tmp_path):
    scenario = tmp_path / "four.toml"
    scenario.write_text(example(rounds=4))
    address = loopback_address()
    db = tmp_path / "runs.db"
    first = fleet.server("first", scenario, address, db, "--connect-timeout", "90")
    devices = [
        fleet.device(f"dev{i}", address, "--stock-supernode", "--dataset", "digits",
                     "--partition-id", str(i), "--max-wait", "120",
                     "--logs", str(tmp_path / f"dev{i}-logs"))
        for i in range(2)
    ]  # fmt: skip
    deadline = time.monotonic() + 180
    while not Store(str(db)).get_run(1).rounds:
        assert time.monotonic() < deadline and first.poll() is None, fleet.output("first")
        time.sleep(0.3)
    fleet.start("pause", "runs", "pause", "1", "--db", str(db)).wait(60)
    assert first.wait(timeout=120) == 3, fleet.output("first")  # paused at a round boundary
    paused_at = len(Store(str(db)).get_run(1).rounds)
    assert paused_at < 4
    time.sleep(20)  # the SuperLink is away a while: the devices wait for it
    assert all(d.poll() is None for d in devices), [fleet.output(f"dev{i}") for i in range(2)]

    second = fleet.server(
        "second", scenario, address, db, "--resume", "1", "--connect-timeout", "120", devices=None
    )
    assert second.wait(timeout=240) == 0, fleet.output("second")
    summary = json.loads(fleet.output("second").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 4
    rounds = Store(str(db)).get_run(1).rounds
    assert [r.number for r in rounds] == [1, 2, 3, 4]
    assert all(r.num_accepted == 2 for r in rounds)
    for i, device in enumerate(devices):
        assert device.poll() is None or device.returncode == 0, fleet.output(f"dev{i}")
        assert "rejoining" in fleet.output(f"dev{i}") or "is back" in fleet.output(f"dev{i}")
