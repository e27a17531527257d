"""Command-line mistakes a new user makes: one line, exit 2, nothing created or changed.

Also the success paths of ``runs pause|abort|set`` and the exit codes 1 (the run failed) and
3 (an operator stopped it), each through the real command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def small_scenario(folder: Path, rounds: int = 2, extra: str = "") -> Path:
    path = folder / "s.toml"
    path.write_text(QUICKSTART.read_text().replace("rounds = 20", f"rounds = {rounds}") + extra)
    return path


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A database holding one completed 2-round run (id 1)."""
    folder = tmp_path_factory.mktemp("store")
    db = folder / "runs.db"
    result = invoke("simulate", small_scenario(folder), "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return folder, db


def snapshot(folder: Path, db: Path) -> tuple[dict[str, bytes], str]:
    """Every file under ``folder`` but the database's own (SQLite rewrites them when it
    checkpoints its log), and what the database holds (to show that nothing changed)."""
    files = {
        str(p): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(db.name)
    }
    return files, invoke("runs", "export", 1, "--db", db).stdout


def assert_one_line_exit_2(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


# -- -o naming a folder, and the format of a file ---------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("models", "export", 1, "--format", "safetensors"),
        ("models", "export", 1, "--format", "npz"),
        ("models", "export", 1, "--format", "onnx"),
        ("models", "export", 1),
        ("runs", "export", 1),
        ("runs", "export", 1, "--format", "csv"),
    ],
)
def test_out_naming_an_existing_folder_is_refused(stored, tmp_path, command):
    folder, db = stored
    before = snapshot(folder, db)
    result = invoke(*command, "--db", db, "-o", tmp_path)
    assert_one_line_exit_2(result, "is a folder")
    assert snapshot(folder, db) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command, name",
    [
        (("models", "export", 1, "--format", "safetensors"), "m.npz"),
        (("models", "export", 1, "--format", "npz"), "m.onnx"),
        (("models", "export", 1, "-f", "onnx"), "m.safetensors"),
        (("runs", "export", 1, "--format", "json"), "r.csv"),
        (("runs", "export", 1, "--format", "csv"), "r.JSON"),
    ],
)
def test_a_format_that_contradicts_the_extension_is_refused(stored, tmp_path, command, name):
    _, db = stored
    result = invoke(*command, "--db", db, "-o", tmp_path / name)
    assert_one_line_exit_2(result, "contradicts the file name")
    assert list(tmp_path.iterdir()) == []


def test_the_format_follows_the_extension(stored, tmp_path):
    _, db = stored
    assert invoke("models", "export", 1, "--db", db, "-o", tmp_path / "m.npz").exit_code == 0
    with np.load(tmp_path / "m.npz") as tensors:  # a real npz, not safetensors named .npz
        assert sum(tensors[k].size for k in tensors.files) == 64 * 64 + 64 + 64 * 10 + 10
    result = invoke("models", "export", 1, "--db", db, "-o", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["format"] == "onnx"
    assert (tmp_path / "m.onnx").read_bytes()[:2] != b"PK"  # protobuf, not a zip
    assert invoke("runs", "export", 1, "--db", db, "-o", tmp_path / "r.csv").exit_code == 0
    assert (tmp_path / "r.csv").read_text().startswith("round,client_id,")
    assert invoke("runs", "export", 1, "--db", db, "-o", tmp_path / "r.json").exit_code == 0
    assert json.loads((tmp_path / "r.json").read_text())["id"] == 1


# -- a mistyped --db ------------------------------------------------------------------------------

READERS = [
    ("runs", "list"),
    ("runs", "show", 1),
    ("runs", "export", 1),
    ("runs", "pause", 1),
    ("runs", "abort", 1),
    ("runs", "set", 1, "learning_rate=0.1"),
    ("runs", "resume", 1),
    ("rounds", "list", 1),
    ("rounds", "show", 1, 1),
    ("models", "export", 1, "-o", "m.safetensors"),
    ("db", "status"),
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(map(str, c[:2])))
def test_a_mistyped_db_is_no_store_and_creates_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "runs.bd"
    result = invoke(*command, "--db", missing)
    assert_one_line_exit_2(result, f"no store at {missing}")
    assert list(tmp_path.iterdir()) == []  # no database file, no checkpoints folder


def test_an_empty_database_is_no_store_and_stays_empty(db_url):
    """A server URL (or SQLite file) that holds no fedcore store is not made one by a read."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    with engine.connect():  # SQLite creates the (empty) file here; PostgreSQL already has it
        pass
    for command in (("runs", "list"), ("runs", "show", 1), ("rounds", "list", 1)):
        result = invoke(*command, "--db", db_url)
        assert_one_line_exit_2(result, "no store at")
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


# -- the commands that change a run, and the exit codes 1 and 3 --------------------------------


def test_pause_set_resume_and_abort_through_the_cli(tmp_path, monkeypatch):
    """An operator's pause while `runs resume` drives the run -> exit 3, paused at the next
    boundary; set on the paused run; resume -> 0 with the new settings applied; abort of a
    paused run is final at once."""
    from aggregator.store import Store
    from simulations.lifecycle import StoreHooks

    db = tmp_path / "runs.db"
    first = invoke("simulate", small_scenario(tmp_path, rounds=3), "--db", db, "--json")
    assert first.exit_code == 0, first.output
    store = Store(str(db))
    run_id = _paused_after_one_round(store, tmp_path)
    assert invoke("runs", "pause", run_id, "--db", db).exit_code == 2  # already paused

    record, operator = StoreHooks.record, []

    def record_then_pause(hooks, outcome):  # the operator types `fedcore runs pause` now
        record(hooks, outcome)
        if outcome.number == 2:
            operator.append(invoke("runs", "pause", run_id, "--db", db, "--json"))

    monkeypatch.setattr(StoreHooks, "record", record_then_pause)
    stopped = invoke("runs", "resume", run_id, "--db", db)
    monkeypatch.setattr(StoreHooks, "record", record)
    [paused] = operator
    assert paused.exit_code == 0 and json.loads(paused.stdout)["status"] == "running"
    assert stopped.exit_code == 3, stopped.output
    assert f"run {run_id} paused before round 3" in stopped.output
    assert f"`fedcore runs resume {run_id}` continues it" in stopped.output
    assert store.get_run(run_id).status == "paused" and len(store.get_run(run_id).rounds) == 2

    changed = invoke("runs", "set", run_id, "learning_rate=0.01", "local_epochs=2", "--db", db)
    assert changed.exit_code == 0 and "queued" in changed.output
    resumed = invoke("runs", "resume", run_id, "--db", db, "--json")
    assert resumed.exit_code == 0, resumed.output
    run = store.get_run(run_id)
    assert run.status == "completed" and len(run.rounds) == 3
    assert run.config["train"]["learning_rate"] == 0.01 and run.config["train"]["local_epochs"] == 2

    third = _paused_after_one_round(store, tmp_path)
    aborted = invoke("runs", "abort", third, "--db", db, "--json")
    assert aborted.exit_code == 0 and json.loads(aborted.stdout)["status"] == "aborted"
    again = invoke("runs", "resume", third, "--db", db)
    assert_one_line_exit_2(again, "is aborted: there is nothing to resume")


def _paused_after_one_round(store, folder: Path) -> int:
    """A stored run of the 3-round scenario paused after committing round 1."""
    from aggregator.rounds import StopRun
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    def stop_after_one(outcome):
        raise StopRun("paused")

    with pytest.raises(StopRun):
        run_scenario(load_scenario(folder / "s.toml"), store=store, on_round=stop_after_one)
    run_id = store.list_runs()[0].id
    assert store.get_run(run_id).status == "paused"
    return run_id


def test_a_run_that_fails_exits_1(tmp_path):
    """No client can meet a 1 ms deadline: round 1 fails, exit 1, the run is stored failed."""
    population = "\n[population]\ndevices = { rpi-4-2gb = 100.0 }\ndeadline_s = 0.001\n"
    db = tmp_path / "runs.db"
    result = invoke("simulate", small_scenario(tmp_path, extra=population), "--db", db)
    assert result.exit_code == 1, result.output
    assert "no update was accepted" in result.output and "Traceback" not in result.output
    runs = json.loads(invoke("runs", "list", "--db", db, "--json").stdout)
    assert runs[0]["status"] == "failed" and "no update was accepted" in runs[0]["error"]


# -- a malformed $FEDCORE_AGG_THREADS ----------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "server"])
@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5", "100000"])
def test_a_malformed_fold_thread_count_is_one_line(tmp_path, monkeypatch, command, value):
    monkeypatch.setenv("FEDCORE_AGG_THREADS", value)
    monkeypatch.chdir(tmp_path)
    result = invoke(command, small_scenario(tmp_path))
    assert_one_line_exit_2(result, f"$FEDCORE_AGG_THREADS={value!r}: give a whole number")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]  # nothing created
