"""Faults on a real deployment of lean agents (``fedcore-device``), on loopback over TLS with
enrolled devices: an agent killed mid-round, the SuperLink killed mid-run, an agent held to
its device class's memory.

1. Three enrolled agents; one trains under ``prlimit --as`` at its device class's memory
   (rpi-zero-2w: 307 MiB of address space), another is held mid-round 1 (it has its train
   message) and SIGKILLed there. Round 1 completes at its deadline with the other two and
   records the dropout; the agent is started again at once, as a service manager would.
   Flower keeps the killed node online for up to two heartbeat intervals (60 s) and refuses
   a second activation meanwhile, as it refuses a twin; the agent remembers its node id in
   its ``--state-dir`` and goes on as that node, so it trains in round 2 under its enrolled
   name (a twin started beside it is still refused).
2. The SuperLink is SIGKILLed while an agent holds round 2's training: ``fedcore server``
   leaves the run resumable; ``fedcore server --resume`` starts a new SuperLink, the same
   agents reconnect by themselves, and the run ends with rounds 1..3 once each and the
   simulated model bit for bit (the held reply, finished after the kill, is counted nowhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import Store
from aggregator.store.enrolment import enroll
from deploy.certs import create_certificates
from deploy.keys import generate_node_keys
from deploy.node import HOLD_FROM, HOLD_TRAINING
from device_profiles import get_profile
from tests.deploy.fleet import Fleet, example, loopback_address, marked_pids, needs_flower
from tests.simulations.run_watch import committed

pytestmark = [pytest.mark.slow, needs_flower]

SMALL = "rpi-zero-2w"  # 512 MB of RAM, 307 MiB of it for applications


class Enrolled:
    """Three enrolled devices ``dev-0..2`` (partition i) of a TLS server on loopback, the
    digits example cut three ways for ``rounds`` rounds."""

    def __init__(self, tmp_path: Path, rounds: int) -> None:
        self.db, self.scenario = tmp_path / "runs.db", tmp_path / "three.toml"
        self.scenario.write_text(example(num_clients=3, clients_per_round=3, rounds=rounds))
        self.address = loopback_address()
        self.certs = create_certificates(tmp_path / "certs", ["127.0.0.1"])
        store = Store(str(self.db), create=True)
        self.keys = {}
        for i in range(3):
            private, _, key = generate_node_keys(tmp_path / f"key-{i}")
            enroll(store, f"dev-{i}", key.openssh, key.fingerprint, i, None)
            self.keys[i] = private

    def server(self, fleet: Fleet, name: str, *extra: str, devices: int | None = None
               ) -> subprocess.Popen:  # fmt: skip
        """``fedcore server`` over TLS for the enrolled devices."""
        return fleet.server(name, self.scenario, self.address, self.db, "--certs",
                            str(self.certs.ca_cert.parent), *extra, devices=devices)  # fmt: skip

    def agent(self, fleet: Fleet, name: str, i: int, *extra: str,
              under: tuple[str, ...] = (), env: dict[str, str] | None = None,
              ) -> subprocess.Popen:  # fmt: skip
        """``fedcore-device`` for ``dev-i`` (``under``: a command it runs under)."""
        argv = [*under, sys.executable, "-m", "deploy.agent", "--superlink", self.address,
                "--root-certificates", str(self.certs.ca_cert), "--key", str(self.keys[i]),
                "--dataset", "digits", "--partition-id", str(i), "--num-partitions", "3",
                "--max-wait", "120", *extra]  # fmt: skip
        return fleet.spawn(name, argv, env)


def wait_for_file(path: Path, server: subprocess.Popen, fleet: Fleet, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert server.poll() is None, fleet.output("server")
        assert time.monotonic() < deadline, f"no {path.name} within {timeout:g} s"
        time.sleep(0.1)


def address_space_limit(pid: int) -> int | None:
    """The ``Max address space`` soft limit of a process (None: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    raise AssertionError("no address space line in /proc/PID/limits")


def test_an_agent_killed_mid_round_drops_out_and_rejoins_the_next_round(fleet, tmp_path):
    devices = Enrolled(tmp_path, rounds=3)
    db = devices.db
    server = devices.server(fleet, "server", "--connect-timeout", "120", "--round-timeout", "20",
                            devices=3)  # fmt: skip
    budget = get_profile(SMALL).memory_budget_bytes
    killed = tmp_path / "never"  # dev-2 holds every train message: it is killed holding one
    state = ("--state-dir", str(tmp_path / "dev-2-state"))  # where dev-2 keeps its node id
    devices.agent(fleet, "dev-0", 0)
    small = devices.agent(fleet, "dev-1", 1, "--device", SMALL,
                          under=("prlimit", f"--as={budget}", "--"))  # fmt: skip
    held = devices.agent(fleet, "dev-2", 2, *state, env={HOLD_TRAINING: str(killed)})
    wait_for_file(Path(f"{killed}.held"), server, fleet)  # dev-2 has round 1's train message
    assert address_space_limit(small.pid) == budget
    held.kill()
    held.wait(timeout=30)
    assert committed(db)[1] == 0  # killed mid-round 1

    # started again at once, as a service manager would (Restart=always): the SuperLink still
    # counts its node online, and it goes on as that node (round 2's message waits for it)
    again = devices.agent(fleet, "dev-2b", 2, *state)
    deadline = time.monotonic() + 120
    while "device joined" not in fleet.output("dev-2b"):
        assert again.poll() is None, fleet.output("dev-2b")
        assert time.monotonic() < deadline and server.poll() is None, fleet.output("server")
        time.sleep(0.2)
    assert "continuing as node" in fleet.output("dev-2b")
    twin = devices.agent(fleet, "dev-2twin", 2, *state)  # the same key beside it: refused
    assert twin.wait(timeout=90) == 1, fleet.output("dev-2twin")
    assert "already in use" in fleet.output("dev-2twin")
    assert server.wait(timeout=300) == 0, fleet.output("server")
    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 3

    rounds = Store(str(db)).get_run(1).rounds
    assert [r.number for r in rounds] == [1, 2, 3]
    for r in rounds:
        ids = [c.client_id for c in r.clients]
        assert len(ids) == len(set(ids)) and set(ids) <= {0, 1, 2}  # each counted once
        assert [c.accepted for c in r.clients if c.client_id == 1] == [True]  # within 307 MiB
    [dropped] = [c for c in rounds[0].clients if c.client_id == 2]
    assert not dropped.accepted and dropped.reason == "no reply before the timeout"
    for later in rounds[1:]:  # dev-2 is back in from the next round on
        assert sorted((c.client_id, c.accepted) for c in later.clients) == [
            (0, True), (1, True), (2, True)]
    assert small.poll() is None or small.returncode == 0, fleet.output("dev-1")


def superlink_pid(marker: str) -> int:
    """The one ``flower-superlink`` process of this fleet."""
    [pid] = [pid for pid in marked_pids(marker)
             if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
    return pid


def test_a_killed_superlink_is_resumed_and_nothing_counts_twice(fleet, tmp_path):
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    devices = Enrolled(tmp_path, rounds=3)
    db = devices.db

    def server(name: str, *extra: str) -> subprocess.Popen:
        """``fedcore server``; each starts a SuperLink of its own (fresh state, as without
        ``--logs``): the agents' nodes are new to it."""
        return devices.server(fleet, name, "--connect-timeout", "180", "--round-timeout", "120",
                              "--logs", str(tmp_path / f"{name}-logs"), *extra)  # fmt: skip

    first = server("first")
    fleet.wait_for("first", "waiting for 3 device(s)", first, timeout=90)
    gate = tmp_path / "gate"  # dev-0 trains round 1, then holds round 2
    hold = {HOLD_TRAINING: str(gate), HOLD_FROM: "2"}
    agents = [devices.agent(fleet, f"dev-{i}", i, env=hold if i == 0 else None)
              for i in range(3)]  # fmt: skip
    wait_for_file(Path(f"{gate}.held"), first, fleet)  # round 2 runs: dev-0 holds it
    assert committed(db) == ("running", 1)
    link = superlink_pid(fleet.marker)
    subprocess.run(["kill", "-KILL", str(link)], check=True)
    code = first.wait(timeout=120)
    assert code == 3, fleet.output("first")  # paused, not failed
    assert committed(db) == ("paused", 1)
    assert "--resume 1" in fleet.output("first")
    gate.touch()  # dev-0 finishes round 2 of the dead run: its reply has nowhere to go

    second = server("second", "--resume", "1")
    assert second.wait(timeout=400) == 0, fleet.output("second")
    summary = json.loads(fleet.output("second").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 3
    rounds = Store(str(db)).get_run(1).rounds
    assert [r.number for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert sorted(c.client_id for c in r.clients) == [0, 1, 2]
        assert all(c.accepted for c in r.clients), [c.reason for c in r.clients]
    deployed = Store(str(db)).load_checkpoint(1)[1].params
    np.testing.assert_array_equal(deployed, run_scenario(load_scenario(devices.scenario)).final)
    for i in range(3):  # the same agents, started once, rejoined by themselves
        assert agents[i].poll() in (None, 0), fleet.output(f"dev-{i}")
        assert "the SuperLink is back" in fleet.output(f"dev-{i}"), fleet.output(f"dev-{i}")
