"""Timestamps of a deployment's steps, to see where a round's time goes.

With ``FEDCORE_TRACE=FILE`` in its environment, each process of a deployment (the ServerApp,
the lean agents) appends one JSON line per step to FILE: ``{"t": wall-clock seconds, "pid":
..., "event": NAME, ...fields}``. Processes on one machine share the clock, so
``benchmarks.deploy`` lines the server's and the devices' steps up into one round's breakdown.
Without the variable (a real deployment) ``event`` returns at once and nothing is written.
Each line is one ``write`` to a file opened for appending: lines of several processes do not
interleave.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

ENV = "FEDCORE_TRACE"


def enabled() -> bool:
    """Whether this process traces (``FEDCORE_TRACE`` is set)."""
    return bool(os.environ.get(ENV))


def event(name: str, at: float | None = None, **fields: Any) -> None:
    """Append step ``name`` (at wall-clock ``at``, default now) with ``fields`` to the trace
    file, if this process traces; a trace that cannot be written is skipped, never raised."""
    path = os.environ.get(ENV)
    if not path:
        return
    record = {"t": time.time() if at is None else at, "pid": os.getpid(), "event": name,
              **fields}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(record, default=str) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a trace file, in time order (unreadable lines skipped)."""
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("t"), int | float):
                events.append(record)
    return sorted(events, key=lambda r: r["t"])


__all__ = ["ENV", "enabled", "event", "read"]
