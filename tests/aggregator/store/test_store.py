"""The store on SQLite and PostgreSQL: runs, rounds, checkpoints, controls, migrations."""

import json
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from aggregator.rounds import ClientOutcome, RoundOutcome
from aggregator.store import NotOwner, Store, StoreError, resolve_url, this_process
from aggregator.store.checkpoints import CheckpointError
from aggregator.store.schema import (
    HEAD_REVISION,
    SchemaState,
    head_revision,
    schema_state,
    upgrade,
)


def outcome(number: int, value: float = 0.0) -> RoundOutcome:
    clients = [
        ClientOutcome(0, 2**63 + 5, True, 10, 0.5, 0.1),
        ClientOutcome(1, 7, False, reason="non-finite values"),
    ]
    params = np.full(3, value, np.float32)
    state = {"opt.m": np.arange(3, dtype=np.float32)}
    return RoundOutcome(number, clients, 0.5, 0.4, 0.9, 1.5, params, server_state=state)


def test_runs_rounds_clients_and_checkpoints_survive_reopening(db_url, tmp_path):
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "inprocess", 2**40, {"a": 1}, {"name": "mlp"})
    store.record_round(run_id, outcome(1, 1.0))
    store.record_round(run_id, outcome(2, 2.0))
    store.finish_run(run_id, "completed")
    store.engine.dispose()

    again = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run = again.get_run(run_id)
    assert (run.name, run.status, run.seed, run.config) == ("demo", "completed", 2**40, {"a": 1})
    assert [r.number for r in run.rounds] == [1, 2]
    assert run.rounds[0].num_accepted == 1
    clients = run.rounds[0].clients
    assert clients[0].node_id == str(2**63 + 5)  # uint64 node ids survive
    assert clients[1].reason == "non-finite values"
    assert run.finished_at is not None and run.owner is None
    row, checkpoint = again.load_checkpoint(run_id)
    assert row.number == 2 and len(row.checkpoint_sha256) == 64
    np.testing.assert_array_equal(checkpoint.params, np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(checkpoint.server_state["opt.m"], np.arange(3))


def test_a_tampered_checkpoint_is_refused(db_url, tmp_path):
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "inprocess", 1, {})
    store.record_round(run_id, outcome(1, 1.0))
    path = store.get_round(run_id, 1).checkpoint_path
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        store.load_checkpoint(run_id, 1)


def test_round_lookups(db_url, tmp_path):
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "inprocess", 1, {})
    with pytest.raises(StoreError, match="no committed round"):
        store.get_round(run_id)
    store.record_round(run_id, outcome(1))
    with pytest.raises(StoreError, match="has no round 7"):
        store.get_round(run_id, 7)
    with pytest.raises(StoreError, match="no run with id 99"):
        store.get_run(99)


def test_controls_are_taken_once_and_conflicts_refused(db_url, tmp_path):
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "inprocess", 1, {})
    store.queue_control(run_id, "set", {"learning_rate": 0.01})
    store.queue_control(run_id, "pause")
    taken = store.take_controls(run_id, 3)
    assert [c.command for c in taken] == ["set", "pause"] and taken[0].payload["learning_rate"]
    assert store.take_controls(run_id, 4) == []
    store.finish_run(run_id, "paused")
    with pytest.raises(StoreError, match="already paused"):
        store.queue_control(run_id, "pause")
    store.queue_control(run_id, "abort")  # a paused run has no aggregator: aborted at once
    assert store.get_run(run_id).status == "aborted"
    with pytest.raises(StoreError, match="is aborted"):
        store.claim_run(run_id, "inprocess")
    with pytest.raises(StoreError, match="is aborted"):
        store.queue_control(run_id, "pause")


def test_a_resume_drops_a_pause_left_queued_but_keeps_settings_and_aborts(db_url, tmp_path):
    """A pause queued by an interrupt that then stopped the run at once must not pause the
    resumed run; a queued ``set`` still applies, and ``pending_stop`` sees pause and abort."""
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "inprocess", 1, {})
    assert not store.pending_stop(run_id)
    store.queue_control(run_id, "set", {"learning_rate": 0.01})
    assert not store.pending_stop(run_id)
    store.queue_control(run_id, "pause")
    assert store.pending_stop(run_id)
    store.finish_run(run_id, "paused")  # stopped at once: the pause was never applied
    store.claim_run(run_id, "inprocess")
    assert not store.pending_stop(run_id)
    assert [c.command for c in store.take_controls(run_id, 1)] == ["set"]
    store.queue_control(run_id, "abort")
    store.claim_run(run_id, "inprocess")  # same process: not "still running"
    assert store.pending_stop(run_id)
    assert [c.command for c in store.take_controls(run_id, 1)] == ["abort"]


def test_a_driver_that_lost_its_run_writes_nothing(db_url, tmp_path):
    """Fencing: once a run is another driver's (a resume claimed it; here "gone:1" stands for
    the orphaned ServerApp of a killed SuperLink), the stale driver can neither commit a round
    (not even its checkpoint file), nor take the new driver's commands, nor pause the run."""
    store = Store(db_url, checkpoints=str(tmp_path / "ck"))
    run_id = store.create_run("demo", "deployment", 1, {})
    me, stale = this_process(), "gone:1"
    store.record_round(run_id, outcome(1, 1.0), owner=me)
    store.queue_control(run_id, "set", {"learning_rate": 0.01})
    with pytest.raises(NotOwner, match=f"run {run_id} is no longer this driver's"):
        store.record_round(run_id, outcome(2, 2.0), owner=stale)
    assert not (tmp_path / "ck" / f"run-{run_id}" / "round-0002.npz").exists()
    assert not list((tmp_path / "ck").rglob("*0002*"))
    with pytest.raises(NotOwner):
        store.take_controls(run_id, 1, owner=stale)
    assert store.pending_stop(run_id) is False and store.take_controls(run_id, 1, owner=me)
    assert store.finish_run(run_id, "paused", error="interrupted", owner=stale) is False
    run = store.get_run(run_id)
    assert (run.status, run.owner, run.error, len(run.rounds)) == ("running", me, None, 1)
    assert store.finish_run(run_id, "paused", owner=me) is True
    with pytest.raises(NotOwner, match="driven by no process"):  # stopped: nobody's now
        store.record_round(run_id, outcome(2, 2.0), owner=me)
    store.record_round(run_id, outcome(2, 2.0))  # no owner given: unfenced, as before


def test_an_older_schema_is_refused_until_upgraded_and_keeps_its_data(db_url, tmp_path):
    engine = sa.create_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO runs (id, name, status, backend, seed, config, created_at) "
            "VALUES (1, 'old', 'completed', 'inprocess', 3, '{}', CURRENT_TIMESTAMP)"
        )
    engine.dispose()
    with pytest.raises(StoreError, match="fedcore db upgrade") as info:
        Store(db_url)
    assert "\n" not in str(info.value)
    store = Store(db_url, migrate=True)
    assert store.get_run(1).name == "old"
    assert store.get_run(1).model_spec is None  # a column added by 0002


def test_a_newer_or_foreign_schema_is_refused(db_url):
    engine = sa.create_engine(db_url)
    upgrade(engine)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer than this fedcore"):
        Store(db_url)
    with engine.begin() as c:
        c.exec_driver_sql("DROP TABLE alembic_version")
    with pytest.raises(StoreError, match="not a fedcore store"):
        Store(db_url)
    engine.dispose()


def test_fresh_stores_start_at_head(db_url):
    store = Store(db_url)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            head_revision()
        )


def test_the_cheap_head_is_alembics_head():
    assert HEAD_REVISION == head_revision()


def test_opening_a_current_store_does_not_import_alembic(tmp_path):
    db = str(tmp_path / "current.db")
    Store(db).engine.dispose()  # created (and migrated) here
    code = (
        "import json, sys\n"
        "from aggregator.store import Store\n"
        f"Store({db!r}).create_run('x', 'inprocess', 0, {{}})\n"
        "print(json.dumps('alembic' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


def test_schema_states_without_and_with_alembic(db_url):
    engine = sa.create_engine(db_url)
    assert schema_state(engine).kind == "empty"
    upgrade(engine, "0002")
    assert (schema_state(engine).kind, schema_state(engine).revision) == ("behind", "0002")
    upgrade(engine)
    assert schema_state(engine) == SchemaState("current", HEAD_REVISION, HEAD_REVISION)
    engine.dispose()


def test_sqlite_is_in_wal_mode(tmp_path):
    store = Store(str(tmp_path / "wal.db"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert store.checkpoint_root == tmp_path / "wal-checkpoints"


def test_url_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDCORE_DB", raising=False)
    assert resolve_url(None) == "sqlite:///fedcore.db"
    assert resolve_url("x.db") == "sqlite:///x.db"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("FEDCORE_DB", str(tmp_path / "env.db"))
    assert resolve_url(None).endswith("env.db")


@pytest.mark.parametrize(
    "db, match",
    [
        ("/no/such/dir/x.db", "directory does not exist"),
        ("nosuchdialect://x/y", "cannot open database|invalid database URL"),
        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot open database"),
    ],
)
def test_bad_databases_give_one_line_errors(db, match):
    with pytest.raises(StoreError, match=match) as info:
        Store(db)
    assert "\n" not in str(info.value)
