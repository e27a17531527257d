"""Ctrl-C while a command prepares its scenario: it says what was interrupted and exits like
every other interrupt (3 after a first signal, 128 + N after a second), never Click's
"Aborted!" with exit 1.

The signals are sent by the preparation itself (to this process, in the main thread), so
nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal

import pytest

import simulations.lifecycle
import simulations.prepare
from aggregator.store import Store
from tests.cli.test_input_cases import invoke, small_scenario


def interrupting_preparation(monkeypatch: pytest.MonkeyPatch, *signals: int) -> None:
    """Make ``prepare_scenario`` receive ``signals`` before it does its work."""
    prepare = simulations.prepare.prepare_scenario

    def interrupted(*args, **kwargs):
        for sig in signals:
            os.kill(os.getpid(), sig)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(simulations.prepare, "prepare_scenario", interrupted)
    monkeypatch.setattr(simulations.lifecycle, "prepare_scenario", interrupted)


@pytest.mark.parametrize("command", ["simulate", "server"])
def test_a_first_interrupt_while_preparing_stops_with_nothing_stored(
    tmp_path, monkeypatch, command
):
    db = tmp_path / "runs.db"
    interrupting_preparation(monkeypatch, signal.SIGINT)
    result = invoke(command, small_scenario(tmp_path), "--db", db)
    assert result.exit_code == 3, result.output
    assert "SIGINT: interrupted while preparing the scenario: nothing stored" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert Store(str(db)).list_runs() == []


def test_a_second_interrupt_while_preparing_stops_at_once(tmp_path, monkeypatch):
    db = tmp_path / "runs.db"
    interrupting_preparation(monkeypatch, signal.SIGTERM, signal.SIGINT)
    result = invoke("simulate", small_scenario(tmp_path), "--db", db)
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert "interrupted while preparing the scenario: nothing was stored" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert Store(str(db)).list_runs() == []


def test_a_second_interrupt_while_a_resume_prepares_leaves_the_run_paused(
    tmp_path, monkeypatch
):
    from tests.cli.test_input_cases import _paused_after_one_round

    db = tmp_path / "runs.db"
    store = Store(str(db))
    small_scenario(tmp_path, rounds=3)
    run_id = _paused_after_one_round(store, tmp_path)
    interrupting_preparation(monkeypatch, signal.SIGINT, signal.SIGINT)
    result = invoke("runs", "resume", run_id, "--db", db)
    assert result.exit_code == 130, result.output
    assert f"interrupted: run {run_id} paused at its last committed round" in result.output
    run = store.get_run(run_id)
    assert run.status == "paused" and [r.number for r in run.rounds] == [1]
    monkeypatch.undo()
    again = invoke("runs", "resume", run_id, "--db", db, "--json")
    assert again.exit_code == 0, again.output
