"""Enrolled devices on a running SuperLink: register their keys, map nodes, revoke, report.

Flower's SuperNode authentication (``flower-superlink --enable-supernode-auth``) admits only
keys registered through its Control API; each registration yields the node id the device will
have. ``register_enrolled`` registers every active enrolment with ``flwr supernode register``
and records ``node id -> enrolment`` for the run; ``EnrolledDirectory`` hands the round loop
``{enrolled shard: node id}`` of the enrolled, unrevoked, connected nodes before each round, so
a device's identity is its key, never a number it declares. ``Revocations`` unregisters a
revoked device's node (``flwr supernode unregister``): the SuperLink refuses its next request.
``Refusals`` turns the SuperLink log's refused activations into one line each, naming the key.
``admit_identity`` is what SecAgg+'s identity check asks of the enrolment: a node's identity
certificate must name the device enrolled for that node, with its enrolled key, unrevoked.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.processes import CONNECTION, flower_bin, flower_env

if TYPE_CHECKING:
    from aggregator.store import Store
    from aggregator.store.enrolment import Enrolled
    from fedcore.secagg.identity import Peer

FLWR_TIMEOUT = 60.0


class EnrolmentError(RuntimeError):
    """Registering or unregistering a device with the SuperLink failed (one line)."""


def _flwr(home: Path, *args: str) -> dict:
    """Run ``flwr ARGS fedcore --format json`` against the private connection; its JSON."""
    command = [flower_bin("flwr"), *args, CONNECTION, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=flower_env(home), capture_output=True, text=True, timeout=FLWR_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise EnrolmentError(f"`flwr {args[0]} {args[1]}` took over {FLWR_TIMEOUT:g} s") from None
    try:
        reply = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        reply = {"success": False, "error-message": (done.stdout + done.stderr).strip()}
    if not reply.get("success"):
        message = str(reply.get("error-message") or "no reason given").strip().splitlines()
        raise EnrolmentError(f"`flwr {args[0]} {args[1]}`: {message[-1] if message else ''}")
    return reply


def register_enrolled(store: Store, run_id: int, home: Path) -> dict[str, int]:
    """Register every active enrolment's key with the SuperLink; ``{name: node id}``."""
    from aggregator.store.enrolment import list_enrolled, register_node

    names: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fedcore-keys-") as folder:
        for device in list_enrolled(store):
            if not device.active:
                continue
            key = Path(folder) / f"{device.name}.pub"
            key.write_text(device.public_key + "\n", encoding="ascii")
            reply = _flwr(home, "supernode", "register", str(key), "--name", device.name)
            node_id = int(reply["node-id"])
            register_node(store, run_id, device.name, node_id)
            names[device.name] = node_id
    return names


@dataclass
class Revocations:
    """Unregisters the SuperLink node of each device revoked while the run goes on (only the
    nodes this SuperLink registered: a resumed run's older node ids are not its own)."""

    store: Store
    run_id: int
    home: Path
    nodes: set[int]  # node ids registered on this SuperLink
    done: set[int] = field(default_factory=set)

    def check(self) -> list[str]:
        """Unregister newly revoked nodes; one line per device handled."""
        from aggregator.store.enrolment import registered_nodes

        lines = []
        for node_id, device in registered_nodes(self.store, self.run_id).items():
            if device.active or node_id in self.done or node_id not in self.nodes:
                continue
            self.done.add(node_id)
            try:
                _flwr(self.home, "supernode", "unregister", str(node_id))
            except EnrolmentError as exc:
                lines.append(f"revoked {device.name} (node {node_id}): {exc}")
                continue
            lines.append(f"revoked {device.name} (node {node_id}): the SuperLink refuses it now")
        return lines


_REFUSED = re.compile(
    r"\[/v1/fleet/activate-node\]\[ApiError:\d+\] Attempted to register SuperNode with "
    r"public key: b'(-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----)\\n', "
    r"exception: (.*)$"
)


_UNAUTHENTICATED = re.compile(
    r'\[uvicorn\.access\] (\S+):\d+ - "POST (/v1/fleet/\S+) HTTP/[\d.]+" 401'
)


@dataclass
class Refusals:
    """Reads new lines of the SuperLink's log; one line per refused device, with the reason
    (a refused activation names the key; a refused request its address, once per address)."""

    log: Path
    describe: Callable[[str], str]  # fingerprint -> "not enrolled" / "enrolled as ... (revoked)"
    offset: int = 0
    addresses: set[str] = field(default_factory=set)

    def check(self) -> list[str]:
        """The refusals logged since the last call."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        from deploy.keys import fingerprint

        try:
            with self.log.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(4 * 1024 * 1024)
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        lines = []
        for raw in chunk[:end].decode("utf-8", "replace").splitlines():
            denied = _UNAUTHENTICATED.search(raw)
            if denied is not None and denied.group(1) not in self.addresses:
                self.addresses.add(denied.group(1))
                lines.append(
                    f"refused a request from {denied.group(1)} ({denied.group(2)}): invalid "
                    "SuperNode authentication (a revoked device, or a node id that is not its "
                    "own); later refusals from there are only in the SuperLink log"
                )
            match = _REFUSED.search(raw)
            if match is None:
                continue
            pem, why = match.group(1).replace("\\n", "\n"), match.group(2).strip()
            try:
                print_ = fingerprint(load_pem_public_key(pem.encode("ascii")))  # type: ignore[arg-type]
            except ValueError:
                print_ = "an unreadable key"
            reason = (
                "already online (a second device with this key?)" if "activated" in why else why
            )
            lines.append(f"refused a device with key {print_} ({self.describe(print_)}): {reason}")
        return lines


def describe_key(store: Store) -> Callable[[str], str]:
    """``fingerprint -> what the store knows of it`` (for refusal lines)."""
    from aggregator.store.enrolment import by_fingerprint

    def describe(print_: str) -> str:
        device = by_fingerprint(store, print_)
        if device is None:
            return "not enrolled"
        return f"enrolled as {device.name}" + ("" if device.active else ", revoked")

    return describe


def admit_identity(store: Store, run_id: int) -> Callable[[int, Peer], str | None]:
    """``(node id, certified peer) -> refusal reason or None`` from the store's enrolment."""
    from aggregator.store.enrolment import registered_nodes
    from deploy.keys import fingerprint

    def admit(node: int, peer: Peer) -> str | None:
        device = registered_nodes(store, run_id).get(node)
        if device is None:
            return f"node {node} is not an enrolled device of this run"
        if not device.active:
            return f"{device.name} is revoked"
        if peer.name != device.name:
            return f"node {node} is enrolled as {device.name!r}"
        if fingerprint(peer.key) != device.fingerprint:
            return f"the certified key is not the one {device.name!r} enrolled"
        return None

    return admit


class EnrolledDirectory:
    """``round -> {enrolled shard: node id}`` of enrolled, unrevoked, connected nodes.

    The first call waits (up to ``connect_timeout`` s) for ``min_nodes`` of them; later calls
    take whoever is there, so a revoked or vanished device simply leaves the selection.
    """

    def __init__(
        self,
        grid: object,
        nodes: Callable[[], Mapping[int, Enrolled]],
        min_nodes: int,
        connect_timeout: float,
        poll: float = 0.5,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.grid, self.nodes, self.min_nodes = grid, nodes, min_nodes
        self.connect_timeout, self.poll = connect_timeout, poll
        self.on_wait = on_wait  # called while waiting (may raise to stop the wait: a pause)
        self.waited = False

    def current(self) -> dict[int, int]:
        """The mapping now."""
        connected = set(self.grid.get_node_ids())  # type: ignore[attr-defined]
        return {
            device.partition_id: node_id
            for node_id, device in self.nodes().items()
            if device.active and node_id in connected
        }

    def __call__(self, round_number: int) -> dict[int, int]:
        from aggregator.rounds import RoundFailed

        clients = self.current()
        if self.waited:
            return clients
        deadline = time.monotonic() + self.connect_timeout
        while len(clients) < self.min_nodes:
            if self.on_wait is not None:
                self.on_wait()
            if time.monotonic() >= deadline:
                raise RoundFailed(
                    f"only {len(clients)} of the {self.min_nodes} enrolled devices needed "
                    f"connected within {self.connect_timeout:g} s"
                )
            time.sleep(self.poll)
            clients = self.current()
        self.waited = True
        return clients


__all__ = [
    "EnrolledDirectory",
    "admit_identity",
    "EnrolmentError",
    "Refusals",
    "Revocations",
    "describe_key",
    "register_enrolled",
]
