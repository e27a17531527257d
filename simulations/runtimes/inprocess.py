"""An in-process Flower ``Grid``: each message goes straight to the ClientApp, no polling.

The ServerApp and ClientApp are the very objects Flower's runtimes execute; only the transport
is gone. Messages are not serialised, so the round trip costs what the handlers cost.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedcore import protocol


class InProcessGrid(Grid):
    """A grid of ``num_nodes`` simulated nodes served by one ``ClientApp`` in this process.

    Node ``i`` (partition ``i``) has node id ``base + i``; its ``Context`` is built on its first
    message, so a population of 100,000 costs nothing until its clients are asked to train.
    ``node_config(i)`` says what node ``i`` is told (default: its partition). A simulated
    population's network wraps this grid (``simulations.runtimes.simulated``).
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        seed: int = 0,
        *,
        node_config: Callable[[int], dict[str, Any]] | None = None,
        base: int | None = None,
    ) -> None:
        rng = random.Random(seed)
        self._client_app = client_app
        self._run = Run.create_empty(run_id=rng.getrandbits(63))
        self._num_nodes = num_nodes
        self._base = rng.getrandbits(62) if base is None else base
        self._node_config = node_config
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        # Flower's runtimes set the process-wide task identity before any Message is built.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def node_id(self, partition: int) -> int:
        """The node id of partition ``partition``."""
        return self._base + partition

    def context(self, node_id: int) -> Context | None:
        """Node ``node_id``'s context (built now if it has none yet), or None if no such node."""
        return self._context(node_id)

    def _context(self, node_id: int) -> Context | None:
        context = self._contexts.get(node_id)
        partition = node_id - self._base
        if context is None and 0 <= partition < self._num_nodes:
            config = (
                self._node_config(partition)
                if self._node_config is not None
                else {protocol.PARTITION_ID: partition, "num-partitions": self._num_nodes}
            )
            context = self._contexts[node_id] = Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config=config,
                state=RecordDict(),
                run_config={},
            )
        return context

    def set_run(self, run: Run) -> None:
        """Adopt ``run`` as the run these messages belong to."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build a message to ``dst_node_id`` (kept for Grid compatibility)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """All simulated nodes (a range: nothing is built per node)."""
        return range(self._base, self._base + self._num_nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node now; keep the reply for ``pull_messages``."""
        ids = []
        for msg in messages:
            message_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = message_id
            self._replies[message_id] = self._deliver(msg)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Hand over (and forget) the replies to ``message_ids``."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message and return every reply (nothing is ever late in-process)."""
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        context = self._context(msg.metadata.dst_node_id)
        if context is None:
            reason = f"no node with id {msg.metadata.dst_node_id}"
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, reason), reply_to=msg)
        try:
            return self._client_app(msg, context)
        except Exception as exc:  # a client crash is a rejected update, not a server crash
            reason = f"{type(exc).__name__}: {exc}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
