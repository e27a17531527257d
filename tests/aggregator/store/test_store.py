import numpy as np
import pytest

from aggregator.rounds import ClientOutcome, RoundOutcome
from aggregator.store import Store, StoreError, resolve_url


def outcome(number: int) -> RoundOutcome:
    clients = [
        ClientOutcome(0, 2**63 + 5, True, 10, 0.5, 0.1),
        ClientOutcome(1, 7, False, reason="non-finite values"),
    ]
    return RoundOutcome(number, clients, 0.5, 0.4, 0.9, 1.5, np.zeros(3, np.float32))


def test_runs_rounds_and_clients_survive_reopening(tmp_path):
    path = tmp_path / "runs.db"
    store = Store(str(path))
    run_id = store.create_run("demo", "inprocess", 3, {"a": 1})
    store.record_round(run_id, outcome(1))
    store.record_round(run_id, outcome(2))
    store.finish_run(run_id, "completed")
    store.engine.dispose()

    run = Store(str(path)).get_run(run_id)
    assert (run.name, run.status, run.seed, run.config) == ("demo", "completed", 3, {"a": 1})
    assert [r.number for r in run.rounds] == [1, 2]
    assert run.rounds[0].num_accepted == 1
    clients = run.rounds[0].clients
    assert clients[0].node_id == str(2**63 + 5)  # uint64 node ids survive
    assert clients[1].reason == "non-finite values"
    assert run.finished_at is not None


def test_sqlite_is_in_wal_mode(tmp_path):
    store = Store(str(tmp_path / "wal.db"))
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


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
    ],
)
def test_bad_databases_give_one_line_errors(db, match):
    with pytest.raises(StoreError, match=match) as info:
        Store(db)
    assert "\n" not in str(info.value)


def test_missing_run(tmp_path):
    with pytest.raises(StoreError, match="no run with id 42"):
        Store(str(tmp_path / "x.db")).get_run(42)


def test_an_older_database_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE client_results (id INTEGER PRIMARY KEY, round_id INTEGER, "
                   "client_id INTEGER, node_id VARCHAR(40), accepted BOOLEAN, "
                   "num_examples INTEGER, train_loss FLOAT, seconds FLOAT, reason TEXT)")
    Store(str(path))
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(client_results)")}
    assert {"bytes_up", "bytes_down"} <= columns
