"""The lean agent's session with its SuperLink: joining, heartbeats, leaving, and rejoining
with back-off when the SuperLink or the link goes away (``client_runtime.fleet.agent`` answers
the messages on top of it).

- **joins** with its key (activate; the SuperLink must know the key: enrolment) or, with no
  key, registers a throw-away one (a plain loopback server), then sends heartbeats from a
  thread, as Flower's SuperNode does;
- **survives** the SuperLink going away: exponential back-off with jitter (``backoff``),
  re-activation with the same key once it is back, for up to ``max_wait`` s (a SuperLink
  restarted on its old state, which still counts the node online and refuses to activate it
  again, acknowledges its heartbeat: the session goes on as that node);
- **restarts** as its node: with a ``NodeFile`` (``client_runtime.fleet.nodefile``) an agent
  killed and started again, refused because its old node still counts as online, goes on as
  that node instead of waiting up to 60 s for it to lapse.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from client_runtime.fleet.proto import fleet_pb2, heartbeat_pb2, node_pb2
from client_runtime.fleet.transport import (
    FleetClient,
    FleetError,
    Refused,
    Unreachable,
    VersionMismatch,
)

if TYPE_CHECKING:
    from client_runtime.fleet.nodefile import NodeFile

log = logging.getLogger("fedcore.device")

HEARTBEAT_INTERVAL = 30.0  # what the node promises (Flower's default; the SuperLink wants 10..1800)
HEARTBEAT_TIMEOUT = 5.0


class AgentStopped(Exception):
    """The agent stops: refused, or the SuperLink has been gone ``max_wait`` s (the message)."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass
class Settings:
    """How the agent talks to its SuperLink (the defaults suit a loopback test and a Pi)."""

    poll_active: float = 0.2
    poll_burst: float = 0.04  # the wait between polls for a message expected soon
    poll_hot: float = 1.0  # for this long after a reply (or twice the expected time)
    poll_lead: float = 0.6  # the first poll after a reply: at this part of the expected time
    poll_idle: float = 3.0
    active_window: float = 30.0
    max_wait: float = 120.0
    backoff: tuple[float, float] = (0.5, 10.0)  # first and longest wait while unreachable
    max_message_bytes: int = 512 * 1024 * 1024
    pull_patience: float = 60.0  # how long an announced object may stay unavailable
    transfer_threads: int = 3  # a message's objects pulled / pushed this many at once


def backoff_delays(first: float, longest: float, rng: random.Random) -> Iterator[float]:
    """Exponential back-off with full jitter: uniform(first, min(longest, first * 2**k))."""
    ceiling = first
    while True:
        yield rng.uniform(first, ceiling)
        ceiling = min(longest, ceiling * 2)


class Session:
    """One device's node on one SuperLink: its id, heartbeats, and (re)joining."""

    def __init__(
        self,
        client: FleetClient,
        settings: Settings | None = None,
        register: bool = False,
        rng: random.Random | None = None,
        node_file: NodeFile | None = None,
    ) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.register = register  # no enrolled key: register this (throw-away) key first
        self.rng = rng or random.Random()
        self.node_file = node_file  # where this key's node id outlives the process
        self.node_id: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def node(self) -> node_pb2.Node:
        assert self.node_id is not None
        return node_pb2.Node(node_id=self.node_id)

    def _public_key(self) -> bytes:
        signer = self.client.signer
        if signer is None:
            raise AgentStopped("a key is needed to join (none given)", refused=True)
        return signer.public

    def activate(self) -> int:
        """Register (throw-away key only) and activate this node; its node id."""
        key = self._public_key()
        if self.register:
            try:
                self.client.call("register-node", fleet_pb2.RegisterNodeFleetRequest(
                    public_key=key), fleet_pb2.RegisterNodeFleetResponse)
            except FleetError as exc:
                if exc.code != 23:  # already registered (a rejoin with the same key)
                    raise
        response = self.client.call(
            "activate-node",
            fleet_pb2.ActivateNodeRequest(public_key=key, heartbeat_interval=HEARTBEAT_INTERVAL),
            fleet_pb2.ActivateNodeResponse,
        )
        self.node_id = int(response.node_id)
        if self.node_file is not None:
            self.node_file.remember(self.node_id)
        return self.node_id

    def _heartbeats(self) -> None:
        while not self._stop.wait((HEARTBEAT_INTERVAL - HEARTBEAT_TIMEOUT)
                                  * self.rng.uniform(0.7, 0.9)):
            if self.node_id is None:
                continue
            try:
                self.client.call(
                    "send-node-heartbeat",
                    heartbeat_pb2.SendNodeHeartbeatRequest(
                        node=self.node, heartbeat_interval=HEARTBEAT_INTERVAL),
                    heartbeat_pb2.SendNodeHeartbeatResponse, timeout=HEARTBEAT_TIMEOUT)
            except FleetError as exc:  # the main loop notices and reconnects
                log.debug("heartbeat failed: %s", exc)

    def stop(self) -> None:
        """Ask the loop to end (from a signal handler or another thread)."""
        self._stop.set()

    def leave(self) -> None:
        """Deactivate this node (best effort) and close the connection."""
        self._stop.set()
        if self.node_id is not None:
            try:
                self.client.call("deactivate-node", fleet_pb2.DeactivateNodeRequest(
                    node_id=self.node_id), fleet_pb2.DeactivateNodeResponse, timeout=5.0)
            except FleetError:
                pass
        self.client.close()
        if self.node_file is not None:
            self.node_file.release()

    def _connect(self, first: bool) -> None:
        """Activate, retrying with back-off while the SuperLink is away (``max_wait``)."""
        started = time.monotonic()
        delays = backoff_delays(*self.settings.backoff, self.rng)
        remembered = self.node_file.claim() if first and self.node_file is not None else None
        while not self._stop.is_set():
            try:
                self.activate()
                if not first:
                    log.warning("the SuperLink is back: rejoined as node %d", self.node_id)
                return
            except Refused as exc:
                if first and remembered is not None:  # this device's agent restarted?
                    self.node_id = remembered
                    if self._still_online():
                        log.warning("continuing as node %d: the SuperLink still counts it "
                                    "online (this agent restarted)", remembered)
                        return
                    self.node_id = None
                if first:
                    raise AgentStopped(_refusal(exc), refused=True) from None
                if self._still_online():  # a SuperLink restarted on its old state
                    log.warning("the SuperLink is back: continuing as node %d", self.node_id)
                    return
                reason = _refusal(exc)  # e.g. revoked; or a restarted SuperLink not ready yet
            except Unreachable as exc:
                reason = str(exc)
            except VersionMismatch as exc:
                raise AgentStopped(str(exc), refused=True) from None
            except FleetError as exc:  # the SuperLink failed the call: try again, as if away
                reason = str(exc)
            waited = time.monotonic() - started
            if waited >= self.settings.max_wait and reason.startswith("the SuperLink refused"):
                raise AgentStopped(reason, refused=True)  # e.g. revoked during the run
            if waited >= self.settings.max_wait:
                raise AgentStopped(
                    f"the SuperLink has been gone {waited:.0f} s ({reason}); left the federation")
            self._stop.wait(min(next(delays), self.settings.max_wait - waited))

    def _still_online(self) -> bool:
        """Whether the SuperLink still counts this node online (it refuses to activate a node
        it has not yet seen time out, as after a restart on its old state): a heartbeat for
        the node id this key had is acknowledged."""
        if self.node_id is None:
            return False
        try:
            return bool(self.client.call(
                "send-node-heartbeat",
                heartbeat_pb2.SendNodeHeartbeatRequest(
                    node=self.node, heartbeat_interval=HEARTBEAT_INTERVAL),
                heartbeat_pb2.SendNodeHeartbeatResponse, timeout=HEARTBEAT_TIMEOUT).success)
        except FleetError:
            return False


def _refusal(exc: FleetError) -> str:
    return (
        "the SuperLink refused this device's key: not enrolled, revoked, or already in use "
        f"by another device (the operator's `fedcore clients list` shows which) [{exc}]"
    )


__all__ = ["AgentStopped", "HEARTBEAT_INTERVAL", "Session", "Settings", "backoff_delays"]
