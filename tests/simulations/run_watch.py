"""Watching a run another process drives, through SQLite read-only (opening a ``Store`` would
create or migrate): for the tests that kill or interrupt it at a random moment mid-round."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path


def committed(db: Path, run_id: int = 1) -> tuple[str | None, int]:
    """The run's status and its number of committed rounds (None, 0 before it exists)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None, 0
            (count,) = conn.execute(
                "SELECT count(*) FROM rounds WHERE run_id = ?", (run_id,)
            ).fetchone()
            return row[0], int(count)
    except sqlite3.Error:  # not created yet, or the schema is being made
        return None, 0


def wait_for_round(
    db: Path, proc: subprocess.Popen, rounds: int, timeout: float = 120, run_id: int = 1
) -> None:
    """Until ``rounds`` rounds of the run are committed (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while committed(db, run_id)[1] < rounds:
        assert proc.poll() is None, f"the run's process exited ({proc.returncode}) too early"
        assert time.monotonic() < deadline, f"no round {rounds} within {timeout:g} s"
        time.sleep(0.01)
