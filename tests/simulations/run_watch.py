"""Watching a run another process drives, through SQLite read-only (opening a ``Store`` would
create or migrate): for the tests that kill or interrupt it at a random moment mid-round."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUN = (  # run_scenario(scenario dict in a JSON file, store=Store(db))
    "import json, sys\n"
    "from aggregator.store import Store\n"
    "from simulations.lifecycle import run_scenario\n"
    "from simulations.scenario import scenario_from_dict\n"
    "run_scenario(scenario_from_dict(json.load(open(sys.argv[1]))), store=Store(sys.argv[2]))\n"
)


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


def kill_after_round(
    raw: dict[str, Any], db: Path, rounds: int, delay: float = 0.0
) -> tuple[str | None, int]:
    """Run scenario ``raw`` in a child process storing run 1 in ``db``; SIGKILL it ``delay`` s
    after round ``rounds`` is committed. The run's status and committed rounds just before the
    kill (a run that ended first was not killed: the caller decides whether that may happen)."""
    scenario = db.with_name(db.stem + "-scenario.json")
    scenario.write_text(json.dumps(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(scenario), str(db)], env=env)
    try:
        wait_for_round(db, proc, rounds)
        time.sleep(delay)
        at_kill = committed(db)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return at_kill
