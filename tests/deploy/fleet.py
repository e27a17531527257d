"""Real deployments on loopback for the slow deploy tests: ``fedcore server`` and ``fedcore
client`` started as separate processes, offline, and stopped at teardown.

Every process gets a marker in its environment, which Flower's own processes inherit, so a test
can prove that none is left behind; any network use beyond loopback would hit a dead proxy.
The ``fleet`` fixture (``tests/deploy/conftest.py``) hands each test one `Fleet`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from deploy.appdir import toml_value
from deploy.processes import flower_bin, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "digits.toml"

needs_flower = pytest.mark.skipif(
    not Path(flower_bin("flower-superlink")).exists(), reason="flower-superlink is not installed"
)


def example(**changes: int | str | bool) -> str:
    """The digits example's text with ``key = value`` lines changed, e.g. ``example(rounds=4)``;
    a key the example lacks is added to its ``[federation]`` table (``secagg=True``)."""
    text = EXAMPLE.read_text()
    for key, value in changes.items():
        line = f"{key} = {toml_value(value)}"
        found = [old for old in text.splitlines() if old.split("=")[0].strip() == key]
        assert len(found) <= 1, f"the example has {len(found)} lines {key!r}"
        if found:
            text = text.replace(found[0], line)
        else:
            text = text.replace("[federation]\n", f"[federation]\n{line}\n")
    return text


def loopback_address() -> str:
    """``127.0.0.1:PORT`` with a port nobody listens on right now."""
    return f"127.0.0.1:{free_port()}"


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

    def start(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """``fedcore ARGS`` with stdout/stderr in ``tmp_path/name.out|err``."""
        return self.spawn(name, [sys.executable, "-m", "cli.main", *args], env)

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """Any command, in a session of its own, with the fleet's environment (plus ``env``)
        and its output in ``tmp_path/name.out|err``; stopped at teardown like the others."""
        process = subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=(self.tmp_path / f"{name}.out").open("wb"),
            stderr=(self.tmp_path / f"{name}.err").open("wb"),
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def server(
        self,
        name: str,
        scenario: Path,
        address: str,
        db: Path,
        *extra: str,
        devices: int | None = 2,
        timeout: float = 90,
    ) -> subprocess.Popen:
        """``fedcore server SCENARIO --address ADDRESS --db DB --json EXTRA``; with ``devices``,
        returns once it waits for that many devices."""
        args = [str(scenario), "--address", address, "--db", str(db), "--json", *extra]
        process = self.start(name, "server", *args)
        if devices is not None:
            self.wait_for(name, f"waiting for {devices} device(s)", process, timeout)
        return process

    def device(
        self, name: str, address: str, *extra: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """``fedcore client --superlink ADDRESS EXTRA`` (``env``: added to its environment)."""
        return self.start(name, "client", "--superlink", address, *extra, env=env)

    def output(self, name: str) -> str:
        """What ``name`` printed so far (stdout, then stderr)."""
        out = (self.tmp_path / f"{name}.out").read_text(errors="replace")
        return out + (self.tmp_path / f"{name}.err").read_text(errors="replace")

    def wait_for(self, name: str, text: str, process: subprocess.Popen, timeout: float) -> None:
        """Until ``name`` printed ``text``; fails if it exits first or ``timeout`` s pass."""
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
