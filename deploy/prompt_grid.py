"""A SuperLink grid that collects replies promptly: Flower's polls every 3 s.

Flower 1.42's ``Grid.send_and_receive`` over a SuperLink (``superlink/grid/http_grid.py``)
pushes the messages, then pulls the replies every 3 seconds; every message exchange of a round
(one in a plain round, three to five with SecAgg+) waits for that sleep, however fast the
devices answer. ``PromptGrid`` wraps the ServerApp's grid and does the same with short waits
timed by ``client_runtime.fleet.cadence``: from about when the replies to a push of the same
message types came last time, every ``first`` s for a while, then growing up to ``longest`` s.

Its ``pull_messages`` is ``HttpGrid.pull_messages`` with the same short waits for a reply's
objects: a device pushes a reply's message first and then its objects one by one, so a pull in
between finds the message with objects not yet available, and Flower's ``pull_objects`` then
waits 1 s (doubling, up to 10 s) before it asks again (measured: a second of every plain
round on loopback, 2026-12-07).

Its ``push_messages`` packs each message's small records into one object and its pulls unpack
the replies (``client_runtime.fleet.packing``): every object is an HTTP call the SuperLink
spends 6-9 ms of CPU on, and a train message with its reply came to 13 of them. Everything
else goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid

from client_runtime.fleet.cadence import Cadence
from client_runtime.fleet.packing import pack, unpack
from fedcore import trace

if TYPE_CHECKING:
    from flwr.supercore.run import Run


class PromptGrid(Grid):
    """``grid`` with a prompter ``send_and_receive`` (see the module docstring)."""

    def __init__(self, grid: Grid, first: float = 0.03, longest: float = 0.1) -> None:
        self.grid, self.first, self.longest = grid, first, longest
        self.cadence = Cadence(first, longest)  # when to pull replies (``fleet.cadence``)

    def set_run(self, run: Run) -> None:  # noqa: D102 (Grid's)
        self.grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:  # noqa: D102
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push ``messages`` with their small records packed (``packed``)."""
        return self.grid.push_messages([packed(m) for m in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` that are in (see the module docstring)."""
        return self._pull(message_ids, None)

    def pull_messages_until(self, message_ids: Iterable[str], end: float | None
                            ) -> Iterable[Message]:  # fmt: skip
        """``pull_messages``, waiting for a reply's objects no later than ``end``
        (``time.monotonic()``; the asynchronous courier's deadline): a reply whose objects
        are not in by then comes back as Flower's error reply."""
        return self._pull(message_ids, end)

    def _pull(self, message_ids: Iterable[str], end: float | None) -> Iterable[Message]:
        if isinstance(self.grid, HttpGrid):
            left = None if end is None else max(end - time.monotonic(), self.first)
            return pull_promptly(self.grid, message_ids, self.first, self.longest, left)
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push ``messages``; pull replies until all are in or ``timeout`` s passed."""
        messages = list(messages)
        kind = tuple(sorted({m.metadata.message_type for m in messages if isinstance(m, Message)}))
        trace.event("server.push")
        waiting = set(self.push_messages(messages))
        trace.event("server.pushed", messages=sorted(waiting))
        self.cadence.start(kind, time.monotonic())
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            wait = self.cadence.wait(time.monotonic()) or self.first
            left = None if end is None else end - time.monotonic()
            time.sleep(wait if left is None else max(0.0, min(wait, left)))
            asked = time.time()
            got = list(self._pull(waiting, end))
            for reply in got:
                trace.event("server.pulled", asked=asked,
                            message=reply.metadata.reply_to_message_id)
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                self.cadence.arrived(time.monotonic())
                break
            if end is not None and end - time.monotonic() <= 0:
                break
        trace.event("server.replies", missing=len(waiting))
        return replies


def pull_promptly(grid: HttpGrid, message_ids: Iterable[str], first: float, longest: float,
                  patience: float | None = None) -> list[Message]:  # fmt: skip
    """Flower 1.42's ``HttpGrid.pull_messages`` (the same Runtime API calls, the same error
    reply for a reply whose objects do not come), waiting ``first`` s, growing to ``longest``
    s, between tries of an object that is not available yet, for at most ``patience`` s in
    all (None: Flower's 2 hours; ``send_and_receive`` gives what is left of its timeout)."""
    import httpx
    from flwr.app import Metadata
    from flwr.app.error import Error
    from flwr.app.message import make_message
    from flwr.common.constant import ErrorCode
    from flwr.proto.message_pb2 import ConfirmMessageReceivedRequest
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest
    from flwr.supercore.constant import PULL_MAX_TIME, SYSTEM_MESSAGE_TYPE
    from flwr.supercore.date import now
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_pull_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import (
        ObjectPullError,
        inflate_object_from_contents,
        pull_objects,
    )

    run_id = grid.run.run_id

    def error_reply(proto: Any, code: int, reason: str) -> Message:  # Flower's, as HttpGrid's
        return make_message(
            metadata=Metadata(
                run_id=run_id, message_id="", src_node_id=grid.node.node_id,
                dst_node_id=grid.node.node_id, message_type=SYSTEM_MESSAGE_TYPE, group_id="",
                ttl=0, reply_to_message_id=proto.metadata.reply_to_message_id,
                created_at=now().timestamp()),
            error=Error(code=code, reason=reason))

    client = grid._runtime_client  # noqa: SLF001 (HttpGrid's own connection)
    try:
        response = client.PullMessages(PullAppMessagesRequest(message_ids=list(message_ids)))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == httpx.codes.REQUEST_ENTITY_TOO_LARGE:
            return []  # as HttpGrid: nothing this time (Flower logs why)
        raise
    pull = make_pull_object_fn_protobuf(pull_object_protobuf=client.PullObject, node=grid.node,
                                        run_id=run_id)  # fmt: skip
    replies: list[Message] = []
    for proto, tree in zip(response.messages_list, response.message_object_trees, strict=True):
        message_id = proto.metadata.message_id
        try:
            contents = pull_objects([t.object_id for t in iterate_object_tree(tree)], pull,
                                    max_time=PULL_MAX_TIME if patience is None else patience,
                                    max_tries_per_object=None,
                                    initial_backoff=first, backoff_cap=longest)  # fmt: skip
        except ObjectPullError as exc:
            replies.append(error_reply(proto, ErrorCode.MESSAGE_UNAVAILABLE,
                                       f"Reply message objects are unavailable. {exc}"))
            continue
        client.ConfirmMessageReceived(ConfirmMessageReceivedRequest(
            node=grid.node, run_id=run_id, message_object_id=message_id))
        message = inflate_object_from_contents(message_id, contents)
        message.metadata.__dict__["_message_id"] = message_id  # as HttpGrid does
        try:
            if message.has_content():
                message.content, _ = unpack(message.content)
        except Exception as exc:  # noqa: BLE001 - a device's pack that is not one, never a crash
            replies.append(error_reply(proto, ErrorCode.MESSAGE_UNAVAILABLE,
                                       f"Reply message content is not valid: {exc}"))
            continue
        replies.append(message)
    return replies


def packed(message: Message) -> Message:
    """``message`` with its small records in one object (``client_runtime.fleet.packing``:
    three Fleet calls a device makes for it instead of seven), as a new message with the same
    destination, type, group and time to live; ``message`` itself if nothing is packed."""
    if not isinstance(message, Message) or not message.has_content():
        return message
    content = pack(message.content)
    if content is message.content:
        return message
    meta = message.metadata
    return Message(content, meta.dst_node_id, meta.message_type, ttl=meta.ttl,
                   group_id=meta.group_id)


def prompt(grid: Grid) -> Grid:
    """``grid`` made prompt if it is a SuperLink's (Flower's ``HttpGrid``); any other grid
    (in-process, simulated) already answers at once and is left as it is."""
    return PromptGrid(grid) if isinstance(grid, HttpGrid) else grid


__all__ = ["PromptGrid", "prompt", "pull_promptly"]
