"""Start and stop Flower's own processes: ``flower-superlink``, ``flower-supernode``, ``flwr run``.

Each runs in a session of its own (a terminal's Ctrl-C reaches only us, and we stop them in
order), with Flower's telemetry and update check off, this environment's ``bin`` folder first
on ``PATH`` (a SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` by name) and a
private ``FLWR_HOME``. ``stop`` signals the process group it started, waits, then kills it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

QUIET_FLOWER = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
CONNECTION = "fedcore"  # the SuperLink connection ``flwr run`` uses (in the private FLWR_HOME)


class ProcessError(RuntimeError):
    """A Flower process did not start or stopped early (the message quotes its log)."""


@dataclass(frozen=True)
class Tls:
    """Certificates: the SuperLink's (all three) or, for a SuperNode, only ``ca_certfile``."""

    ca_certfile: Path
    certfile: Path | None = None
    keyfile: Path | None = None


def flower_bin(name: str) -> str:
    """The path of Flower's command ``name`` in this environment (else its bare name)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: quiet, private ``FLWR_HOME``, our ``bin`` first."""
    env = dict(os.environ)
    env.update(QUIET_FLOWER)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ``ValueError`` names the problem."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gateway_args(listen: str, upstream: str, tls: Tls | None) -> list[str]:
    """``python -m deploy.gateway``: the Fleet-only front of a loopback SuperLink."""
    args = [sys.executable, "-m", "deploy.gateway", "--listen", listen, "--upstream", upstream]
    if tls is None:
        return args
    assert tls.certfile is not None and tls.keyfile is not None
    return [
        *args,
        "--certfile",
        str(tls.certfile),
        "--keyfile",
        str(tls.keyfile),
        "--cafile",
        str(tls.ca_certfile),
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails (someone listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


class FlowerProcess:
    """One started Flower process, its log file, and how to stop it."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path | None):
        self.name = name
        self.log = log
        self._log_file: IO[bytes] | None = log.open("ab") if log is not None else None
        self.popen = subprocess.Popen(
            list(args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT if self._log_file is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether it has not exited yet."""
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        """The last lines of its log (for error messages)."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_listening(self, host: str, port: int, timeout: float = 60.0) -> None:
        """Wait until ``host:port`` accepts connections; ``ProcessError`` if it exits first."""
        probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        deadline = time.monotonic() + timeout
        while reachable(probe, port, timeout=1.0) is not None:
            if not self.running():
                raise ProcessError(f"{self.name} exited ({self.popen.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name} did not listen on {host}:{port} in {timeout:g} s")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM its process group, wait up to ``timeout`` s, then SIGKILL; the exit code."""
        try:
            if self.running():
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(5)
            # Its children (superexec, app processes) watch their parent and leave with it;
            # whatever is left of the group gets the same treatment.
            self._signal(signal.SIGTERM)
        finally:
            if self._log_file is not None:
                self._log_file.close()
        return self.popen.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)  # the group of the session it leads
        except (ProcessLookupError, PermissionError):
            pass


def superlink_args(
    host: str, port: int, state: Path | None, tls: Tls | None, node_auth: bool = False
) -> list[str]:
    """``flower-superlink`` arguments: no runtime ``uv sync``, state in the SQLite file
    ``state`` or, if None, in memory (Flower's default); with ``node_auth`` only SuperNodes
    whose keys are registered join (needs TLS).

    The SuperLink serves every Fleet and Runtime API call in one process, one at a time, and
    with its SQLite state each call cost it 2-3 times the CPU of the in-memory state's
    (SQLAlchemy's ORM: a run-status read, traffic and object bookkeeping per call): 0.48 s
    against 0.32 s added per plain round of the digits example (``benchmarks.deploy``, 2 lean
    devices, busy 2-core machine, 2026-12-07)."""
    args = [flower_bin("flower-superlink"), "--host", host, "--port", str(port)]
    if state is not None:
        args += ["--database", str(state)]
    args.append("--disable-runtime-dependency-installation")
    if tls is None:
        return [*args, "--insecure"]
    assert tls.certfile is not None and tls.keyfile is not None
    if node_auth:
        args.append("--enable-supernode-auth")
    return [
        *args,
        "--ssl-ca-certfile",
        str(tls.ca_certfile),
        "--ssl-certfile",
        str(tls.certfile),
        "--ssl-keyfile",
        str(tls.keyfile),
    ]


def node_config_arg(values: Mapping[str, str | int | float | bool]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings quoted (TOML values)."""
    from deploy.appdir import toml_value

    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


def supernode_args(
    superlink: str,
    node_config: Mapping[str, str | int | float | bool],
    runtime_port: int,
    root_certificates: Path | None,
    private_key: Path | None = None,
) -> list[str]:
    """``flower-supernode`` arguments (insecure unless a root certificate is given; with a
    ``private_key`` the node authenticates with it)."""
    args = [flower_bin("flower-supernode"), "--superlink", superlink]
    args += ["--port", str(runtime_port), "--node-config", node_config_arg(node_config)]
    if root_certificates is None:
        return [*args, "--insecure"]
    if private_key is not None:
        args += ["--auth-supernode-private-key", str(private_key)]
    return [*args, "--root-certificates", str(root_certificates)]


def write_connection(flwr_home: Path, address: str, root_certificates: Path | None) -> None:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection, ``CONNECTION``, the default."""
    from deploy.appdir import toml_value

    lines = ["[superlink]", f"default = {toml_value(CONNECTION)}", "", f"[superlink.{CONNECTION}]"]
    lines.append(f"address = {toml_value(address)}")
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {toml_value(str(root_certificates.resolve()))}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def flwr_run_args(app: Path) -> list[str]:
    """``flwr run APP fedcore --stream``: submit the app, follow its logs until it ends."""
    return [flower_bin("flwr"), "run", str(app), CONNECTION, "--stream"]
