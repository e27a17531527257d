"""When to ask the SuperLink again: polls timed to when an answer is likely.

Neither side of Flower 1.42's APIs can wait on the SuperLink for something to arrive: a device
asks ``pull-messages`` until its next message is there, the ServerApp asks ``PullMessages``
until the replies are, and every ask is a call the SuperLink serves in its one process,
between the calls that move the round's objects. Asking often wastes the SuperLink's time on
empty answers; asking seldom leaves an answer waiting for the next ask (measured on the digits
example: the devices' and the server's waits were 0.2 s of a 0.34 s plain round, with polls
growing from 0.05 s to 0.2 s and 0.1 s).

In a federated run the same exchange comes round after round, and so does its timing: the
next message comes about as long after a device's reply to a message of that type as last
time, and the replies to a push of a type about as long after it. ``Cadence`` remembers that
time (the shortest of the last few, so a slow round does not make the next ones late),
does not ask before ``lead`` of it has passed, then asks every ``step`` s for a while (``hot``
s, or twice the expected time if longer), then ever less often (times 1.5 per empty answer, up
to ``longest`` s). Without a record it asks every ``step`` s from the start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

REMEMBERED = 3  # arrival times kept per kind


class Cadence:
    """Waits between polls for answers to things of a kind (a message type) that were sent
    or answered at a known time (see the module docstring). Times are ``time.monotonic()``."""

    def __init__(self, step: float, longest: float, hot: float = 1.0, lead: float = 0.6
                 ) -> None:  # fmt: skip
        self.step, self.longest, self.hot, self.lead = step, longest, hot, lead
        self._took: dict[Hashable, deque[float]] = {}
        self._since: float | None = None  # when the current wait began
        self._kind: Hashable = None
        self._empty = 0  # empty answers since the hot period ended

    def start(self, kind: Hashable, at: float) -> None:
        """A wait for an answer to ``kind`` begins ``at`` (a reply pushed, messages pushed)."""
        self._since, self._kind, self._empty = at, kind, 0

    def arrived(self, at: float) -> None:
        """The answer came ``at``: remembered for the next wait of the same kind; the wait
        ends."""
        if self._since is not None:
            took = self._took.setdefault(self._kind, deque(maxlen=REMEMBERED))
            took.append(max(0.0, at - self._since))
        self._since = None

    def expected(self, kind: Hashable) -> float | None:
        """How long an answer to ``kind`` is expected to take (None: no record yet)."""
        took = self._took.get(kind)
        return min(took) if took else None

    def wait(self, now: float) -> float | None:
        """Seconds until the next poll after an empty answer at ``now``; None when no wait is
        on (nothing sent or answered since the last arrival)."""
        if self._since is None:
            return None
        since = now - self._since
        expected = self.expected(self._kind)
        if expected is not None and since < self.lead * expected:
            return self.lead * expected - since
        if since < max(self.hot, 2 * (expected or 0.0)):
            return self.step
        self._empty += 1
        return min(self.longest, self.step * 1.5 ** self._empty)


__all__ = ["Cadence"]
