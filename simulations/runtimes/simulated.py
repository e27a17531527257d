"""A ``Grid`` wrapper that puts a simulated population's network around any other grid.

The in-process grid and Flower's simulation runtime deliver messages; this wrapper makes the
round behave as on the simulated devices: each train reply is stamped with its simulated
compute and transfer times and energy (``simulations.clock.SimulatedNetwork``), drop-outs and
clients later than the deadline become errors, and replies come back in simulated arrival
order, so over-selection keeps the first that report, whichever runtime ran the clients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class SimulatedGrid(Grid):
    """``grid`` with ``network`` applied to every ``send_and_receive`` (``network=None``: the
    grid of an asynchronous simulation without a population, timed but with no latency)."""

    def __init__(self, grid: Grid, network: Any) -> None:
        self._grid = grid
        self._network = network

    @property
    def run(self) -> Run:
        """The run of the wrapped grid."""
        return self._grid.run

    def set_run(self, run: Run) -> None:
        """Forwarded to the wrapped grid."""
        self._grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Forwarded to the wrapped grid."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Forwarded to the wrapped grid."""
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Forwarded unchanged (the network applies to ``send_and_receive`` rounds)."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Forwarded unchanged."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send through the wrapped grid; return the stamped replies by simulated arrival."""
        return [reply for _, reply in self.send_timed(list(messages), timeout=timeout)]

    def send_timed(
        self, messages: list[Message], *, timeout: float | None = None
    ) -> list[tuple[float, Message]]:
        """Send through the wrapped grid; return ``(simulated seconds after sending, reply)``
        by simulated arrival (all 0 without a network: no latency)."""
        sent = {msg.metadata.dst_node_id: (i, msg) for i, msg in enumerate(messages)}
        timed: list[tuple[float, int, Message]] = []
        for reply in self._grid.send_and_receive(messages, timeout=timeout):
            order, msg = sent.get(reply.metadata.src_node_id, (len(messages), None))
            arrival = 0.0
            if msg is not None and self._network is not None:
                reply, arrival = self._network.stamp(msg, reply)
            timed.append((arrival, order, reply))  # ties: in the order sent, on any runtime
        return [(arrival, reply) for arrival, _, reply in sorted(timed, key=lambda t: t[:2])]
