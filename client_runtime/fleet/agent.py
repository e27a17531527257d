"""The lean device agent: one long-lived process that speaks Flower 1.42's Fleet API itself.

Where a stock SuperNode starts a ``flwr-clientapp`` process per message (a fresh Python, model
and data set each time, 290-304 MiB for the device's process tree), this agent keeps the model
cache, the data and the engine warm in one process, and answers every message with the same
handlers the stock ClientApp runs (``client_runtime.handlers``). What it does:

- **joins** and **survives** the SuperLink going away as a ``Session`` (``fleet.session``:
  enrolment key, heartbeats, back-off with jitter, rejoining for up to ``max_wait`` s);
- **polls** after a reply as ``fleet.cadence`` times it: from about when the next message
  came last time after a reply to a message of that type, every ``poll_burst`` s for a while,
  then less often, up to every ``poll_active`` s while a run is active (a message came in the
  last ``active_window`` s), and backs off to ``poll_idle`` s when idle;
- **loads** the handlers (the engine, models, numpy's kernels) with the first message, not
  while it waits for a run, when given a factory for them;
- **answers** a message: pulls its objects (checked against their ids, within
  ``max_message_bytes``), confirms receipt (while it handles the message), unpacks its
  small records (``fleet.packing``), runs the handler of its type, pushes the reply (packed
  if the message was)
  (a handler's exception becomes Flower's error reply, code 2, so the server records the
  reason); a message id it has answered is never answered again.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from client_runtime.fleet import objects, packing
from client_runtime.fleet.cadence import Cadence
from client_runtime.fleet.parallel import later, unordered
from client_runtime.fleet.proto import fab_pb2, fleet_pb2, message_pb2, recorddict_pb2, run_pb2
from client_runtime.fleet.runconfig import fab_config, scalar
from client_runtime.fleet.session import AgentStopped, Session, Settings
from client_runtime.fleet.transport import (
    FleetClient,
    FleetError,
    NodeSigner,
    Refused,
    RunGone,
    Unreachable,
    VersionMismatch,
)
from fedcore import trace
from fedcore.records import RecordDict

if TYPE_CHECKING:
    from client_runtime.fleet.nodefile import NodeFile
    from client_runtime.handlers import Handler

Handlers = Mapping[str, "Handler"]

log = logging.getLogger("fedcore.device")

CLIENT_APP_RAISED_EXCEPTION = 2  # Flower's ErrorCode for an error reply
REPLIED_MEMORY = 4096  # message ids remembered as answered


@dataclass
class NodeContext:
    """What a handler sees of the node (Flower's ``Context`` has the same fields)."""

    node_id: int
    node_config: dict[str, Any]
    run_config: dict[str, Any]
    state: RecordDict = field(default_factory=RecordDict)


@dataclass
class _Run:
    config: dict[str, Any]
    state: RecordDict = field(default_factory=RecordDict)


@dataclass
class _Unsent:
    """A reply the SuperLink has not yet taken in full (``Agent._deliver``)."""

    message_type: str
    message_id: str  # of the message it answers
    head: message_pb2.Message
    deflated: objects.Deflated
    runtime: float
    expires: float  # time.monotonic() after which it is not pushed again
    tried: bool = False


Bind = Callable[[NodeContext, str], None]  # (context, message type): before each handler


class Agent(Session):
    """One device's connection to one SuperLink, answering its messages (see the module
    docstring)."""

    def __init__(
        self,
        client: FleetClient,
        handlers: Handlers | Callable[[], Handlers],
        node_config: Mapping[str, Any],
        *,
        bind: Bind | None = None,
        settings: Settings | None = None,
        register: bool = False,
        rng: random.Random | None = None,
        node_file: NodeFile | None = None,
    ) -> None:
        super().__init__(client, settings, register, rng, node_file)
        self.handlers = handlers
        self.node_config = dict(node_config)
        self.bind = bind
        self.replied: OrderedDict[str, None] = OrderedDict()
        self.runs: dict[int, _Run] = {}
        self.rounds = 0  # messages answered
        self._last_message = 0.0
        self._last_poll = 0.0  # wall clock when the previous pull-messages answered
        self._unsent: _Unsent | None = None  # a reply not yet in (the link went away)
        self.cadence = Cadence(self.settings.poll_burst, self.settings.poll_active,
                               self.settings.poll_hot, self.settings.poll_lead)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, on_joined: Callable[[int], None] | None = None) -> None:
        """Serve until ``stop()``; raises ``AgentStopped`` when refused or the SuperLink has
        been gone ``max_wait`` s."""
        self._connect(first=True)
        if on_joined is not None:
            assert self.node_id is not None
            on_joined(self.node_id)
        self._heartbeat = threading.Thread(target=self._heartbeats, daemon=True)
        self._heartbeat.start()
        idle_polls = 0
        while not self._stop.is_set():
            try:
                self._deliver()  # a reply held while the link was away goes first
                answered = self.poll_once()
            except (Unreachable, Refused) as exc:
                log.warning("lost the SuperLink (%s); reconnecting", exc)
                self._connect(first=False)
                continue
            except VersionMismatch as exc:
                raise AgentStopped(str(exc), refused=True) from None
            except FleetError as exc:  # the SuperLink failed this call: try again later
                log.warning("%s", exc)
                self._stop.wait(self.settings.poll_idle)
                continue
            idle_polls = 0 if answered else idle_polls + 1
            self._stop.wait(self._next_poll(idle_polls))

    def _next_poll(self, idle_polls: int) -> float:
        """Seconds until the next pull-messages: timed by ``cadence`` after a reply while a
        run is active, else growing with the empty polls (``poll_idle`` when idle)."""
        now = time.monotonic()
        s = self.settings
        if now - self._last_message >= s.active_window:
            return min(s.poll_idle, s.poll_active * 1.5 ** idle_polls)
        wait = self.cadence.wait(now)
        return min(s.poll_active, s.poll_burst * 1.5 ** idle_polls) if wait is None else wait

    def poll_once(self) -> bool:
        """Pull at most one message and answer it; True if one came."""
        asked = time.time()
        response = self.client.call(
            "pull-messages", fleet_pb2.PullMessagesRequest(node=self.node),
            fleet_pb2.PullMessagesResponse)
        previous, self._last_poll = self._last_poll, time.time()
        if not response.messages_list:
            return False
        trace.event("agent.pulled", at=self._last_poll, asked=asked, previous=previous,
                    message=response.messages_list[0].metadata.message_id,
                    type=response.messages_list[0].metadata.message_type)
        if len(response.message_object_trees) != len(response.messages_list):
            raise FleetError("pull-messages: messages and object trees differ in number")
        self._last_message = time.monotonic()
        self.cadence.arrived(self._last_message)
        self.answer(response.messages_list[0], response.message_object_trees[0])
        return True

    # -- one message ---------------------------------------------------------------------------
    def answer(self, message: message_pb2.Message, tree: message_pb2.ObjectTree) -> None:
        """Pull, handle and reply to one message (never twice for one message id)."""
        meta = message.metadata
        if meta.message_id in self.replied:
            log.warning("message %s came again: already answered, not answering twice",
                        meta.message_id[:12])
            return
        if tree.object_id != meta.message_id:
            log.warning("message %s: its object tree is for another message; ignored",
                        meta.message_id[:12])
            return
        started = time.monotonic()
        self._load_handlers()
        try:
            run = self._run(meta.run_id)
            contents = objects.pull_tree(tree, lambda oid: self._pull(meta.run_id, oid),
                                         self.settings.max_message_bytes,
                                         self.settings.transfer_threads)
        except Unreachable:
            raise  # the loop reconnects; the message stays unconfirmed on the SuperLink
        except (FleetError, objects.ObjectError) as exc:  # run gone, hostile or broken message
            log.warning("%s message of run %d not received: %s", meta.message_type,
                        meta.run_id, exc)
            self._remember(meta.message_id)
            return
        trace.event("agent.received", message=meta.message_id,
                    bytes=sum(len(c) for c in contents.values()))
        # The receipt (the SuperLink then drops the message's objects) goes while the message
        # is handled: the SuperLink is idle while the devices train, and the call is off the
        # round's critical path.
        confirming = later(functools.partial(
            self.client.call, "confirm-message-received",
            message_pb2.ConfirmMessageReceivedRequest(
                node=self.node, run_id=meta.run_id, message_object_id=meta.message_id),
            message_pb2.ConfirmMessageReceivedResponse))
        content, error = None, None
        try:
            _, content_in = objects.inflate(tree, contents, self.settings.max_message_bytes)
            if content_in is None:
                raise ValueError("the message carries an error, not content")
            content_in, packed = packing.unpack(content_in, self.settings.max_message_bytes)
            trace.event("agent.decoded", message=meta.message_id)
            content, error = self._handle(meta, run, content_in), None
            trace.event("agent.handled", message=meta.message_id)
            if packed:  # answered as asked: its small records in one object
                content = packing.pack(content)
        except Exception as exc:  # any failure is the server's to record, never a crash here
            from client_runtime.datacheck import MARK

            error = (CLIENT_APP_RAISED_EXCEPTION, f"{type(exc)}:<'{exc}'>")
            if MARK in str(exc):
                log.error("this device's data does not fit the run: %s",
                          str(exc)[str(exc).index(MARK):])
            else:
                log.warning("%s: %s: %s", meta.message_type, type(exc).__name__, exc)
        self._remember(meta.message_id)
        self.rounds += 1
        try:
            confirming.result()
        except FleetError as exc:  # answered all the same: its reply is pushed as ever
            log.info("%s message: receipt not confirmed: %s", meta.message_type, exc)
        self._reply(meta, content, error, time.monotonic() - started)

    def _load_handlers(self) -> None:
        """Load the handlers (the engine, numpy) with the first message, before its objects
        come on threads: numpy maps its libraries while the address space is free (a device
        under ``prlimit --as`` at its class's budget had no room left once the threads' stacks
        and malloc arenas were there). A failure shows when the message is handled."""
        if callable(self.handlers):
            try:
                self.handlers = self.handlers()
            except Exception as exc:  # noqa: BLE001 - _handle loads again and replies with it
                log.debug("loading the handlers failed: %s", exc)

    def _handle(self, meta: message_pb2.Metadata, run: _Run, content: RecordDict) -> RecordDict:
        from client_runtime.handlers import handler_for

        if callable(self.handlers):  # the first message loads the engine and its handlers
            self.handlers = self.handlers()
        handler = handler_for(self.handlers, meta.message_type)
        if handler is None:
            raise ValueError(f"no handler for message type {meta.message_type!r}")
        assert self.node_id is not None
        context = NodeContext(self.node_id, dict(self.node_config), run.config, run.state)
        if self.bind is not None:
            self.bind(context, meta.message_type)
        return handler(content, context)

    def _remember(self, message_id: str) -> None:
        self.replied[message_id] = None
        while len(self.replied) > REPLIED_MEMORY:
            self.replied.popitem(last=False)

    def _run(self, run_id: int) -> _Run:
        if run_id not in self.runs:
            got = self.client.call("get-run", run_pb2.GetRunRequest(node=self.node, run_id=run_id),
                                   run_pb2.GetRunResponse)
            fab = self.client.call(
                "get-fab", fab_pb2.GetFabRequest(node=self.node, hash_str=got.run.fab_hash,
                                                 run_id=run_id), fab_pb2.GetFabResponse)
            overrides = {k: scalar(v) for k, v in got.run.override_config.items()}
            self.runs = {k: v for k, v in self.runs.items() if k > run_id - 8}  # bounded
            self.runs[run_id] = _Run(fab_config(fab.fab.content, overrides))
        return self.runs[run_id]

    def _pull(self, run_id: int, object_id: str) -> bytes:
        deadline = time.monotonic() + self.settings.pull_patience
        wait = 0.02  # the server may still be pushing the message's objects: ask again soon
        while True:
            response = self.client.call(
                "pull-object", message_pb2.PullObjectRequest(
                    node=self.node, run_id=run_id, object_id=object_id),
                message_pb2.PullObjectResponse)
            if not response.object_found:
                raise objects.ObjectError(f"object {object_id[:12]} is not on the SuperLink")
            if response.object_available:
                return response.object_content
            if time.monotonic() > deadline:
                raise objects.ObjectError(f"object {object_id[:12]} never became available")
            time.sleep(wait)
            wait = min(wait * 1.5, 0.25)

    def _reply(self, meta: message_pb2.Metadata, content: RecordDict | None,
               error: tuple[int, str] | None, runtime: float) -> None:
        now = time.time()
        reply = message_pb2.Metadata(
            run_id=meta.run_id, src_node_id=meta.dst_node_id, dst_node_id=meta.src_node_id,
            reply_to_message_id=meta.message_id, group_id=meta.group_id, created_at=now,
            ttl=meta.created_at + meta.ttl - now, message_type=meta.message_type)
        if meta.HasField("dst_task_id"):
            reply.src_task_id = meta.dst_task_id
        if meta.HasField("src_task_id"):
            reply.dst_task_id = meta.src_task_id
        deflated = objects.deflate(reply, content, error)
        reply.message_id = deflated.object_id
        trace.event("agent.encoded", message=meta.message_id)
        head = message_pb2.Message(metadata=reply)
        if error is not None:
            head.error.code, head.error.reason = error
        else:
            head.content.CopyFrom(recorddict_pb2.RecordDict())
        expires = time.monotonic() + min(max(reply.ttl, 0.0), self.settings.max_wait)
        self._unsent = _Unsent(meta.message_type, meta.message_id, head, deflated, runtime,
                               expires)
        self._deliver()

    def _deliver(self) -> None:
        """Push the reply held in ``_unsent``. If the link fails it stays held, and the loop
        pushes it again once it has reconnected (the same reply, the same message id: the
        SuperLink takes a reply it already has as a retry, so it never counts twice), until
        it is in, its run is gone, or its message's time to live (at most ``max_wait``) has
        run out."""
        unsent = self._unsent
        if unsent is None:
            return
        if unsent.tried and time.monotonic() > unsent.expires:
            self._unsent = None
            log.warning("reply to %s not delivered: the SuperLink was away until its "
                        "message expired", unsent.message_type)
            return
        if unsent.head.metadata.src_node_id != self.node_id:
            # rejoined as a new node (a restarted SuperLink): the message it answers was for
            # the old one, and the SuperLink refuses the reply (500) however often it comes
            self._unsent = None
            log.info("reply to %s not delivered: this device rejoined as a new node",
                     unsent.message_type)
            return
        unsent.tried = True
        try:
            self._push(unsent.head.metadata.run_id, unsent.head, unsent.deflated,
                       unsent.runtime)
        except RunGone as exc:
            self._unsent = None
            log.info("reply to %s not delivered: %s", unsent.message_type, exc)
            return
        self._unsent = None
        self.cadence.start(unsent.message_type, time.monotonic())  # the next message's wait
        trace.event("agent.pushed", message=unsent.message_id,
                    reply=unsent.head.metadata.message_id)

    def _push(self, run_id: int, head: message_pb2.Message, deflated: objects.Deflated,
              runtime: float) -> None:
        response = self.client.call(
            "push-messages",
            fleet_pb2.PushMessagesRequest(node=self.node, messages_list=[head],
                                          message_object_trees=[deflated.tree],
                                          clientapp_runtime_list=[runtime]),
            fleet_pb2.PushMessagesResponse)
        wanted = set(response.objects_to_push)

        def push(oid: str) -> bool:
            return self.client.call(
                "push-object",
                message_pb2.PushObjectRequest(
                    node=self.node, run_id=run_id, object_id=oid,
                    object_content=deflated.contents[oid], session_id=response.session_id),
                message_pb2.PushObjectResponse).stored

        ids = [oid for oid in dict.fromkeys(objects.tree_ids(deflated.tree)) if oid in wanted]
        for oid, stored in unordered(push, ids, self.settings.transfer_threads):
            if not stored:
                raise FleetError(f"push-object: the SuperLink did not store {oid[:12]}")


__all__ = ["Agent", "AgentStopped", "NodeContext", "NodeSigner", "Settings"]
