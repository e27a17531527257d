"""A real deployment on loopback: ``fedcore server`` (a flower-superlink and ``flwr run``) and
two ``fedcore client`` devices (flower-supernodes), as separate processes, offline.

Every process gets a marker in its environment, which Flower's own processes inherit, so the
test can prove that none is left behind; any network use beyond loopback would hit a dead
proxy. SuperNodes poll every 3 s: the run takes about 30-40 s on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from aggregator.store import Store
from deploy.processes import flower_bin, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "digits.toml"

pytestmark = [
    pytest.mark.slow,  # real SuperLink and SuperNode processes
    pytest.mark.skipif(
        not Path(flower_bin("flower-superlink")).exists(),
        reason="flower-superlink is not installed",
    ),
]


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (ours and everything they started)."""
    found = []
    needle = f"FEDCORE_TEST_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                found.append(int(entry.name))
    return found


class Fleet:
    """Starts ``fedcore`` commands; stops them (and checks nothing is left) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.marker = uuid.uuid4().hex
        self.started: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(tmp_path / "flwr-home"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FEDCORE_TEST_MARKER": self.marker,
            # offline: anything that tries the network beyond loopback fails
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
            "UV_OFFLINE": "1",
            "PIP_NO_INDEX": "1",
        }

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """``fedcore ARGS`` with stdout/stderr in ``tmp_path/name.out|err``."""
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=(self.tmp_path / f"{name}.out").open("wb"),
            stderr=(self.tmp_path / f"{name}.err").open("wb"),
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def output(self, name: str) -> str:
        out = (self.tmp_path / f"{name}.out").read_text(errors="replace")
        return out + (self.tmp_path / f"{name}.err").read_text(errors="replace")

    def wait_for(self, name: str, text: str, process: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(name):
            assert process.poll() is None, f"{name} exited early:\n{self.output(name)}"
            assert time.monotonic() < deadline, f"no {text!r} from {name}:\n{self.output(name)}"
            time.sleep(0.2)

    def stop_all(self) -> list[int]:
        """SIGTERM what still runs (it stops its Flower processes), then kill any stragglers;
        return the marked processes that were still there after the polite stop."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        deadline = time.monotonic() + 10  # Flower's children leave when their parent is gone
        while (left := marked_pids(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    left = fleet.stop_all()
    assert not left, f"processes left behind: {left}"


def test_two_devices_train_a_scenario_on_a_real_superlink(fleet, tmp_path):
    start = time.perf_counter()
    address = f"127.0.0.1:{free_port()}"
    db = tmp_path / "runs.db"
    server = fleet.start(
        "server",
        "server",
        str(EXAMPLE),
        "--address",
        address,
        "--db",
        str(db),
        "--json",
        "--connect-timeout",
        "60",
        "--round-timeout",
        "60",
        "--logs",
        str(tmp_path / "server-logs"),
    )
    fleet.wait_for("server", "waiting for 2 device(s)", server, timeout=60)
    clients = [
        fleet.start(
            f"client{i}",
            "client",
            "--superlink",
            address,
            "--dataset",
            "digits",
            "--partition-id",
            str(i),
            "--num-partitions",
            "2",
            "--device",
            "rpi-4-2gb",
            "--max-wait",
            "2",
            "--logs",
            str(tmp_path / f"client{i}-logs"),
        )
        for i in range(2)
    ]
    assert server.wait(timeout=150) == 0, fleet.output("server")
    seconds = time.perf_counter() - start

    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["backend"] == "deployment"
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
    logs += [tmp_path / f"client{i}-logs" / "supernode.log" for i in range(2)]
    for log in logs:
        text = log.read_text(errors="replace")
        assert "uv sync" not in text and "Installing dependencies" not in text, log
    per_round = ", ".join(f"{r.seconds:.1f}" for r in run.rounds)
    print(f"deployment: 2 rounds in {seconds:.1f} s (rounds: {per_round} s)")


def test_secure_aggregation_over_a_real_deployment_gives_the_simulated_model(fleet, tmp_path):
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    text = EXAMPLE.read_text()
    for old, new in [
        ('name = "digits-deployed"', 'name = "digits-secagg"'),
        ("num_clients = 2", "num_clients = 3"),
        ("clients_per_round = 2", "clients_per_round = 3"),
        ("rounds = 2", "rounds = 1"),
        ('strategy = "fedavg"', 'strategy = "fedavg"\nsecagg = true'),
    ]:
        assert old in text
        text = text.replace(old, new)
    scenario = tmp_path / "secagg.toml"
    scenario.write_text(text)
    address = f"127.0.0.1:{free_port()}"
    server = fleet.start(
        "server", "server", str(scenario), "--address", address,
        "--db", str(tmp_path / "runs.db"), "--json", "--connect-timeout", "60",
    )  # fmt: skip
    fleet.wait_for("server", "waiting for 3 device(s)", server, timeout=60)
    for i in range(3):
        fleet.start(
            f"client{i}", "client", "--superlink", address, "--dataset", "digits",
            "--partition-id", str(i), "--num-partitions", "3", "--max-wait", "2",
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
