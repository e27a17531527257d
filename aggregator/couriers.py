"""How an asynchronous run sends train messages and gets replies back without a round barrier.

A ``Courier`` delivers a message and hands back replies in arrival order. In a simulation
(``SimulatedCourier``) the reply of a message is computed when it is sent and is due at the
sender's simulated time plus the client's simulated duration, so runs are deterministic for a
seed on any backend; in a deployment (``LiveCourier``) messages are pushed and pulled on
Flower's grid and replies arrive when they arrive.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from flwr.app import Message

if TYPE_CHECKING:
    from flwr.serverapp import Grid


class Courier(Protocol):
    """Delivers train messages and hands back replies in arrival order."""

    def send(self, message: Message, now: float) -> None:
        """Send ``message`` at time ``now``."""

    def receive(self) -> tuple[float, Message] | None:
        """The next reply and its arrival time; None when nothing is in flight."""


@runtime_checkable
class DeadlineGrid(Protocol):
    """A grid that waits for a reply's pieces no later than a deadline (``PromptGrid``)."""

    def pull_messages_until(self, message_ids: list[str], end: float | None
                            ) -> Iterable[Message]:  # fmt: skip
        """The replies to ``message_ids`` that are in, waiting for their objects until
        ``time.monotonic()`` reaches ``end`` (None: as long as Flower allows)."""


@runtime_checkable
class TimedGrid(Protocol):
    """A grid that knows each reply's simulated duration (``SimulatedGrid``)."""

    def send_timed(self, messages: list[Message]) -> list[tuple[float, Message]]:
        """Deliver ``messages``; return ``(seconds after sending, reply)`` pairs."""


class SimulatedCourier:
    """Virtual time: a message is delivered (the client trains) when sent; its reply is due at
    ``now`` plus its simulated duration, ties in the order sent."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.queue: list[tuple[float, int, Message]] = []
        self.sent = 0

    def send(self, message: Message, now: float) -> None:
        """Deliver now; queue the reply for its simulated arrival."""
        if isinstance(self.grid, TimedGrid):
            timed = self.grid.send_timed([message])
        else:
            timed = [(0.0, r) for r in self.grid.send_and_receive([message])]
        for seconds, reply in timed:
            heapq.heappush(self.queue, (now + seconds, self.sent, reply))
            self.sent += 1

    def receive(self) -> tuple[float, Message] | None:
        """The earliest queued reply."""
        if not self.queue:
            return None
        arrival, _, reply = heapq.heappop(self.queue)
        return arrival, reply


class LiveCourier:
    """A deployment: push each message, pull until a reply comes (wall-clock arrival)."""

    def __init__(self, grid: Grid, poll: float = 0.05, timeout: float | None = None) -> None:
        self.grid, self.poll, self.timeout = grid, poll, timeout
        self.pending: dict[str, tuple[float, Message]] = {}
        self.ready: deque[tuple[float, Message]] = deque()
        self.start = time.monotonic()

    def send(self, message: Message, now: float) -> None:
        """Push ``message``; remember when."""
        for message_id in self.grid.push_messages([message]):
            self.pending[message_id] = (time.monotonic(), message)

    def receive(self) -> tuple[float, Message] | None:
        """Poll until a reply is in (or a pending message times out: an error reply)."""
        from flwr.app import Error
        from flwr.common.constant import ErrorCode

        while not self.ready:
            if not self.pending:
                return None
            for reply in self._pull():
                sent = self.pending.pop(reply.metadata.reply_to_message_id, None)
                if sent is not None:
                    self.ready.append((time.monotonic() - self.start, reply))
            if self.timeout is not None:
                for message_id, (sent_at, msg) in list(self.pending.items()):
                    if time.monotonic() - sent_at > self.timeout:
                        del self.pending[message_id]
                        lost = Message(Error(ErrorCode.UNKNOWN, "no reply before the timeout"),
                                       reply_to=msg)
                        self.ready.append((time.monotonic() - self.start, lost))
            if not self.ready:
                time.sleep(self.poll)
        return self.ready.popleft()

    def _pull(self) -> Iterable[Message]:
        """The replies in; a reply whose objects do not come is given up (Flower's error
        reply) by the deadline of the earliest message in flight, not Flower's two hours."""
        ids = list(self.pending)
        if not isinstance(self.grid, DeadlineGrid):
            return self.grid.pull_messages(ids)
        end = None if self.timeout is None else (
            min(sent_at for sent_at, _ in self.pending.values()) + self.timeout)
        return self.grid.pull_messages_until(ids, end)
