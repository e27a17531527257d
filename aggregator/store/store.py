"""The run store: every round is committed in one transaction as it completes.

SQLite by default (a file, in WAL mode so readers see rounds while a run writes), any other
SQLAlchemy URL (PostgreSQL) by ``url``. Connection problems surface as ``StoreError`` with one
line that names the URL, never as a driver traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from aggregator.rounds import RoundOutcome
from aggregator.store.models import Base, ClientResult, Round, Run, utcnow

DEFAULT_DB = "fedcore.db"
DB_ENV = "FEDCORE_DB"


class StoreError(RuntimeError):
    """The store cannot be opened or used (bad URL, unreachable server, missing run)."""


def resolve_url(db: str | None) -> str:
    """Turn ``--db`` / ``$FEDCORE_DB`` / the default into a SQLAlchemy URL.

    A plain path means a SQLite file; anything containing ``://`` is taken as a URL.
    """
    value = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _add_missing_columns(engine: Engine) -> None:
    """Add columns that newer versions introduced (e.g. bytes on the wire) to old tables.

    Every such column is nullable or has a default, so ``ALTER TABLE ... ADD COLUMN`` is
    enough until the schema needs real migrations (Alembic).
    """
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = " DEFAULT 0" if column.default is not None else ""
                connection.execute(
                    text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}')
                )


class Store:
    """Runs, rounds and client results in a SQL database."""

    def __init__(self, db: str | None = None) -> None:
        self.url = resolve_url(db)
        try:
            url = make_url(self.url)
        except ArgumentError as exc:
            raise StoreError(f"invalid database URL {self.url!r}") from exc
        if url.get_backend_name() == "sqlite" and url.database:
            parent = Path(url.database).expanduser().parent
            if not parent.is_dir():
                raise StoreError(f"database directory does not exist: {parent}")
        try:
            self.engine: Engine = create_engine(url)
            if url.get_backend_name() == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except (SQLAlchemyError, ImportError) as exc:
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise StoreError(
                f"cannot open database {url.render_as_string()}: {first_line}"
            ) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return self._sessions()

    def create_run(self, name: str, backend: str, seed: int, config: dict[str, Any]) -> int:
        """Insert a new running run; return its id."""
        with self.session() as s, s.begin():
            run = Run(name=name, backend=backend, seed=seed, config=config, status="running")
            s.add(run)
            s.flush()
            return run.id

    def record_round(self, run_id: int, outcome: RoundOutcome) -> None:
        """Commit one round and its clients' results together."""
        with self.session() as s, s.begin():
            row = Round(
                run_id=run_id,
                number=outcome.number,
                num_selected=outcome.num_selected,
                num_accepted=outcome.num_accepted,
                train_loss=outcome.train_loss,
                test_loss=outcome.test_loss,
                test_accuracy=outcome.test_accuracy,
                seconds=outcome.seconds,
                bytes_up=outcome.bytes_up,
                bytes_down=outcome.bytes_down,
                epsilon=outcome.epsilon,
            )
            row.clients = [
                ClientResult(
                    client_id=c.client_id,
                    node_id=str(c.node_id),
                    accepted=c.accepted,
                    num_examples=c.num_examples,
                    train_loss=c.train_loss,
                    seconds=c.seconds,
                    reason=c.reason,
                    bytes_up=c.bytes_up,
                    bytes_down=c.bytes_down,
                )
                for c in outcome.clients
            ]
            s.add(row)

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        """Mark a run finished (``completed`` or ``failed``)."""
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            run.status, run.error, run.finished_at = status, error, utcnow()

    def get_run(self, run_id: int) -> Run:
        """Load one run with its rounds; ``StoreError`` if there is none."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            _ = [len(r.clients) for r in run.rounds]  # load while the session is open
            return run

    def list_runs(self) -> list[Run]:
        """All runs, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Run).order_by(Run.id.desc())))
