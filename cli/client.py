"""``fedcore client``: this device joins a SuperLink.

The node's data is given as options and checked here (unknown data set or device class,
missing file, partition out of range, unreachable SuperLink: one line, exit 2). By default the
device joins with the lean agent (``deploy.agent``, the same as ``fedcore-device``): one
process that speaks Flower's Fleet API itself and keeps model and data warm. With
``--stock-supernode`` it starts a Flower SuperNode instead, whose ``--node-config`` these
options become (``deploy.clientapp`` reads it for every message). Either serves runs until
Ctrl-C, or until the SuperLink has been gone ``--max-wait`` s.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.errors import FAILED, err_console, fail
from cli.options import DeviceClass

if TYPE_CHECKING:
    from deploy.agent import JoinOptions
    from deploy.processes import FlowerProcess

INTERRUPTED = 130


def client(
    superlink: Annotated[
        str | None,
        typer.Option("--superlink", help="HOST:PORT of the SuperLink (`fedcore server`)."),
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="Check offline that this device's data fits SCENARIO's model (shape, labels, "
            "count) and exit: 0 fits, 2 does not.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="A vendored data set this device holds a shard of."),
    ] = None,
    partition_id: Annotated[
        int | None,
        typer.Option(
            "--partition-id", min=0, help="Which shard (with --dataset); with --data: client id."
        ),
    ] = None,
    num_partitions: Annotated[
        int | None,
        typer.Option(
            "--num-partitions",
            min=1,
            help="Into how many shards the data set is cut (default: federation.num_clients).",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="This device's own examples: an .npz with arrays x and y."),
    ] = None,
    device: DeviceClass = None,
    root_certificates: Annotated[
        Path | None,
        typer.Option("--root-certificates", help="TLS: the CA certificate of the SuperLink."),
    ] = None,
    private_key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="This device's private key (`fedcore clients keygen`): its identity on a "
            "server that admits enrolled devices only (needs --root-certificates).",
        ),
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            "--models",
            help="Folder of model files this device may load (`fedcore models import` output): "
            "a run's `onnx:NAME` model is read from here only (default: none).",
        ),
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            help="This device's identity certificate (`fedcore clients certify`): with it the "
            "device takes part in secure aggregation only with the checks against a malicious "
            "server (needs --key, and --root-certificates: the CA that signed it).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="Local port of the SuperNode's runtime API (default: a free one).",
        ),
    ] = None,
    max_wait: Annotated[
        float,
        typer.Option("--max-wait", min=1, help="Stop after the SuperLink is gone this long (s)."),
    ] = 120.0,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="A folder where the lean agent keeps its node id (with --key): started again "
            "after a crash, it goes on as its node at once instead of waiting up to 60 s.",
        ),
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option(
            "--logs", help="Keep the device's log in this folder (agent.log; stock: supernode.log)."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Log every message (stock: the SuperNode's log).")
    ] = False,
    stock_supernode: Annotated[
        bool,
        typer.Option(
            "--stock-supernode",
            help="Join with Flower's own SuperNode (a process per message) instead of the "
            "lean agent.",
        ),
    ] = False,
) -> None:
    """Join a federation from this device with this device's data."""
    from deploy import agent
    from deploy import processes as p
    from deploy.node import NodeData

    try:
        values = agent.node_values(dataset, partition_id, num_partitions, data, device)
    except agent.UsageError as exc:
        fail(str(exc))
    node = NodeData.parse(values)
    if check is not None:
        _check_offline(check, node)
        return
    if superlink is None:
        fail("--superlink: give HOST:PORT of the SuperLink (or --check SCENARIO to check data)")
    try:
        host, link_port = p.split_address(superlink)
    except ValueError as exc:
        fail(f"--superlink: {exc}")
    if root_certificates is not None and not root_certificates.is_file():
        fail(f"--root-certificates: no such file: {root_certificates}")
    try:
        if private_key is not None:
            agent.check_key(private_key, root_certificates)
        values.update(agent.local_values(identity, private_key, root_certificates, models))
    except agent.UsageError as exc:
        fail(str(exc))
    why = p.reachable(host, link_port)
    if why is not None:
        fail(f"--superlink: cannot reach a SuperLink at {superlink}: {why}")
    from deploy.probe import check_tls

    why = check_tls(host, link_port, root_certificates)
    if why is not None:
        fail(why)
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        fail(f"--state-dir: not a folder: {state_dir}")
    if not stock_supernode:
        options = agent.JoinOptions(superlink, dict(values), root_certificates, private_key,
                                    max_wait, state_dir)
        _join_lean(options, logs, verbose)
        return

    work = logs.resolve() if logs is not None else Path(tempfile.mkdtemp(prefix="fedcore-client-"))
    work.mkdir(parents=True, exist_ok=True)
    log = None if verbose else work / "supernode.log"
    previous = signal.signal(signal.SIGTERM, _interrupt)
    env = p.flower_env(work / "flwr-home")

    def start() -> FlowerProcess:
        # a port of its own for each SuperNode: its predecessor's SuperExec, still retrying the
        # old port while it dies, never reaches the new one's runtime API
        runtime_port = port or p.free_port()
        args = p.supernode_args(superlink, values, runtime_port, root_certificates, private_key)
        return p.FlowerProcess("flower-supernode", args, env, log)

    err_console.print(f"device joined {superlink} ({agent.describe(node)}); Ctrl-C to leave")
    supervisor = _Supervisor(start, host, link_port, max_wait, log)
    try:
        gone = supervisor.run()
    except KeyboardInterrupt:  # the usual way to leave: nothing to keep
        supervisor.stop()
        if logs is None:
            shutil.rmtree(work, ignore_errors=True)
        err_console.print("left the federation")
        raise typer.Exit(INTERRUPTED) from None
    finally:
        supervisor.stop()
        signal.signal(signal.SIGTERM, previous)
    if not gone:
        node_process = supervisor.node
        assert node_process is not None
        code = node_process.popen.returncode
        if "Failed to activate SuperNode" in node_process.tail(40):
            fail(
                f"the SuperLink at {superlink} refused this device's key: not enrolled, "
                "revoked, or already in use by another device (the operator's "
                "`fedcore clients list` shows which)",
                FAILED,
            )
        fail(f"flower-supernode exited ({code}): {node_process.tail(3)} (log: {log})", FAILED)
    if logs is None:
        shutil.rmtree(work, ignore_errors=True)
    err_console.print(
        f"the SuperLink at {superlink} has been gone {max_wait:g} s; left the federation"
    )


def _join_lean(options: JoinOptions, logs: Path | None, verbose: bool) -> None:
    """Serve with the lean agent in this process; exit as ``fedcore-device`` does."""
    from deploy.agent import FAILED as REFUSED
    from deploy.agent import join, setup_logging

    setup_logging(verbose, None if logs is None else logs.resolve() / "agent.log")
    code = join(options, say=lambda line: err_console.print(line, markup=False))
    if code == REFUSED:
        raise typer.Exit(FAILED)
    if code:
        raise typer.Exit(code)


class _Supervisor:
    """Keeps this device's SuperNode running while the SuperLink comes and goes.

    The device waits up to ``max_wait`` s for a SuperLink that went away (a paused or
    restarted server) to come back; a new SuperLink refuses the node the old SuperNode had,
    which then exits, and a new SuperNode is started once the SuperLink is reachable.

    A SuperNode may also stop serving without exiting: Flower 1.42's SuperNode ends its
    connection loop on a status it does not retry (any 4xx/5xx but 401 and 502-504: a 500
    from a SuperLink that is shutting down, say), logs the error, unregisters its node and
    returns from its main function, but its runtime API thread is not a daemon, so the
    process lives on, connected to nothing, for ever. Such a SuperNode, told apart by that
    error line in its log, is stopped and replaced like one that exited (this is what kept a
    device from rejoining a resumed server in CI). A SuperNode refused by the SuperLink, or
    one that keeps ending while the SuperLink is up, ends the wait (``run`` returns False);
    True once the SuperLink has been gone ``max_wait``.
    """

    CRASHES = 3  # consecutive short-lived SuperNodes while the SuperLink is up: give up
    SHORT = 20.0  # seconds

    def __init__(
        self,
        start: Callable[[], FlowerProcess],
        host: str,
        port: int,
        max_wait: float,
        log: Path | None,
        poll: float = 1.0,
    ) -> None:
        self.start, self.host, self.port, self.max_wait = start, host, port, max_wait
        self.lines, self.mismatches, self.poll = _NewLines(log), _DataMismatches(), poll
        self.node: FlowerProcess | None = None

    def run(self) -> bool:
        """Supervise until the SuperLink is gone for good (True) or the node cannot run."""
        from deploy.processes import reachable

        self.node, started, crashes = self.start(), time.monotonic(), 0
        gone_since: float | None = None
        while True:
            time.sleep(self.poll)
            lines = self.lines()
            self._report(lines)
            now = time.monotonic()
            if reachable(self.host, self.port, timeout=2.0) is None:
                if gone_since is not None:
                    err_console.print("the SuperLink is back")
                gone_since = None
            elif gone_since is None:
                gone_since = now
            elif now - gone_since >= self.max_wait:
                return True
            if self.node.running():
                if not any(_ends_the_loop(line) for line in lines):
                    continue
                self.node.stop()  # serving nothing, but alive: as if it had exited
            if "Failed to activate SuperNode" in self.node.tail(40):
                return False  # refused: waiting will not change that
            if gone_since is not None:
                continue  # the SuperLink went away: start again once it is back
            crashes = crashes + 1 if now - started < self.SHORT else 0
            if crashes >= self.CRASHES:
                return False
            err_console.print("rejoining the SuperLink")
            self.node.stop()
            self._report(self.lines())  # the old SuperNode's last words are not the new one's
            self.node, started = self.start(), now

    def _report(self, lines: list[str]) -> None:
        for line in self.mismatches.check(lines):
            err_console.print(f"this device's data does not fit the run: {line}", markup=False)

    def stop(self) -> None:
        """Stop the current SuperNode (if any)."""
        if self.node is not None:
            self.node.stop()


# Errors Flower's SuperNode logs and carries on after (start_client_internal.py); any other
# error it logs ends its connection loop, or its process (``Exit Code:``, which it leaves by)
_CARRIES_ON = ("Failed to receive message", "Failed to send message", "Failed to create task",
               "The FAB could not be verified", "FAB verification failed")  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _ends_the_loop(line: str) -> bool:
    """Whether a SuperNode log line is the error that ended its connection loop."""
    level, _, message = _ANSI.sub("", line).partition(":")
    message = message.strip()
    return (level.strip() == "ERROR" and not message.startswith(_CARRIES_ON)
            and not message.startswith("Exit Code:"))  # fmt: skip


class _NewLines:
    """The complete lines a log gained since the last call (at most 1 MiB a call)."""

    def __init__(self, log: Path | None) -> None:
        self.log, self.offset = log, 0

    def __call__(self) -> list[str]:
        if self.log is None or not self.log.exists():
            return []
        with self.log.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read(1 << 20)
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return chunk[:end].decode("utf-8", "replace").splitlines()


class _DataMismatches:
    """New ``data check:`` lines in the SuperNode's log (its ClientApp refused to train)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def check(self, lines: list[str]) -> list[str]:
        from client_runtime.datacheck import MARK

        found = []
        for raw in lines:
            if MARK in raw:
                line = raw[raw.index(MARK) :].rstrip("'\">) ")
                if line not in self.seen:
                    self.seen.add(line)
                    found.append(line)
        return found


def _check_offline(scenario: Path, node: object) -> None:
    """``--check``: one line, exit 0 if the data fits the scenario's model, else exit 2."""
    from deploy.agent import as_options
    from deploy.check import check_offline
    from deploy.node import NodeConfigError, NodeData

    assert isinstance(node, NodeData)
    if not scenario.is_file():
        fail(f"--check: no such file: {scenario}")
    try:
        err_console.print(check_offline(scenario, node), markup=False)
    except NodeConfigError as exc:
        fail(as_options(str(exc)))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM: leave like Ctrl-C, so the SuperNode is stopped on the way out."""
    raise KeyboardInterrupt
