"""A SuperLink grid that collects replies promptly: Flower's polls every 3 s.

Flower 1.42's ``Grid.send_and_receive`` over a SuperLink (``superlink/grid/http_grid.py``)
pushes the messages, then pulls the replies every 3 seconds; every message exchange of a round
(one in a plain round, three to five with SecAgg+) waits for that sleep, however fast the
devices answer. ``PromptGrid`` wraps the ServerApp's grid and does the same with short waits
that grow while replies are slow (``first`` s, times 1.5, up to ``longest`` s); everything
else goes to the wrapped grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.supercore.run import Run


class PromptGrid(Grid):
    """``grid`` with a prompter ``send_and_receive`` (see the module docstring)."""

    def __init__(self, grid: Grid, first: float = 0.05, longest: float = 0.25) -> None:
        self.grid, self.first, self.longest = grid, first, longest

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

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push ``messages``; pull replies until all are in or ``timeout`` s passed."""
        waiting = set(self.grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = self.first
        while waiting:
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(wait if left is None else min(wait, left))
            wait = min(self.longest, wait * 1.5)
        return replies


def prompt(grid: Grid) -> Grid:
    """``grid`` made prompt if it is a SuperLink's (Flower's ``HttpGrid``); any other grid
    (in-process, simulated) already answers at once and is left as it is."""
    from flwr.superlink.grid import HttpGrid

    return PromptGrid(grid) if isinstance(grid, HttpGrid) else grid


__all__ = ["PromptGrid", "prompt"]
