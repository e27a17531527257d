"""The run store: every round is committed in one transaction as it completes.

SQLite by default (a file, in WAL mode so the CLI can read while a run writes), any other
SQLAlchemy URL (PostgreSQL) by ``db``. Each round's checkpoint is written and fsynced before
its row is committed, so a visible round always has its model. Problems surface as
``StoreError`` with one line that names the URL or id, never as a driver traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from aggregator.rounds import RoundOutcome
from aggregator.store.checkpoints import Checkpoint, checkpoint_path, read_checkpoint
from aggregator.store.checkpoints import write_checkpoint as write_checkpoint_file
from aggregator.store.models import FINISHED, ClientResult, Control, Round, Run, utcnow
from aggregator.store.schema import SchemaState, schema_state, upgrade

DEFAULT_DB = "fedcore.db"
DB_ENV = "FEDCORE_DB"
CHECKPOINTS_ENV = "FEDCORE_CHECKPOINTS"


class StoreError(RuntimeError):
    """The store cannot be opened or used (bad URL, unreachable server, missing run)."""


class NotOwner(StoreError):
    """A process wrote to a run it no longer drives: another took it over (``claim_run``) or
    it was recorded stopped. Its writes are refused, so a stale driver (an orphaned ServerApp
    of a killed SuperLink, say) cannot pause, commit or take commands of a resumed run."""


def resolve_url(db: str | None) -> str:
    """Turn ``--db`` / ``$FEDCORE_DB`` / the default into a SQLAlchemy URL.

    A plain path means a SQLite file; anything containing ``://`` is taken as a URL.
    """
    value = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def parse_url(value: str) -> URL:
    """A SQLAlchemy URL, or ``StoreError`` naming the text that is not one."""
    try:
        return make_url(value)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL {value!r}") from exc


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def require_store(url: URL) -> None:
    """``StoreError('no store at PATH')`` when a SQLite URL names no file (creates nothing)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")  # a committed round survives power loss
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _evaluation_json(outcome: RoundOutcome) -> dict[str, Any] | None:
    """A round's federated evaluation as stored (None when the round had none)."""
    evaluation = getattr(outcome, "evaluation", None)
    return evaluation.to_json() if evaluation is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def this_process() -> str:
    """``host:pid`` of the process driving a run."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_owner(run: Run, owner: str | None) -> None:
    if owner is not None and run.owner != owner:
        now = f"driven by {run.owner}" if run.owner else f"{run.status}, driven by no process"
        raise NotOwner(f"run {run.id} is no longer this driver's ({owner}): it is {now}")


def _alive(owner: str | None) -> bool:
    """Whether ``host:pid`` names another live process on this host (a run still in progress)."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Runs, rounds, client results, checkpoints and control commands in a SQL database."""

    def __init__(
        self,
        db: str | None = None,
        checkpoints: str | None = None,
        migrate: bool = False,
        create: bool = True,
    ) -> None:
        """Open the store at ``db``; ``create=False`` (commands that read or queue) refuses a
        missing SQLite file or an empty database with ``no store at ...`` and creates nothing."""
        self.url = resolve_url(db)
        url = parse_url(self.url)
        sqlite_file = sqlite_path(url)
        if not create:
            require_store(url)
        elif sqlite_file is not None and not sqlite_file.parent.is_dir():
            raise StoreError(f"database directory does not exist: {sqlite_file.parent}")
        shown = url.render_as_string(hide_password=True)
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
            if url.get_backend_name() == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            state = schema_state(self.engine)
            if state.kind == "empty" and not create:
                raise StoreError(f"no store at {shown} (the database is empty)")
            if state.kind == "empty" or (migrate and state.kind == "behind"):
                state = self._upgrade()
        except (SQLAlchemyError, ImportError, OSError) as exc:
            raise StoreError(f"cannot open database {shown}: {_first_line(exc)}") from exc
        if state.kind == "behind" and not migrate:
            raise StoreError(
                f"database {shown} has schema {state.revision}, this fedcore needs {state.head}: "
                f"run `fedcore db upgrade --db {self.url}` first"
            )
        if state.kind == "ahead":
            raise StoreError(
                f"database {shown} has schema {state.revision}, newer than this fedcore knows "
                f"({state.head}): upgrade fedcore"
            )
        if state.kind == "foreign":
            raise StoreError(f"database {shown} has tables but is not a fedcore store")
        if checkpoints is None:
            checkpoints = os.environ.get(CHECKPOINTS_ENV)
        if checkpoints is None:
            base = sqlite_file if sqlite_file is not None else Path("fedcore")
            checkpoints = str(base.with_name(base.stem + "-checkpoints"))
        self.checkpoint_root = Path(checkpoints)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _upgrade(self) -> SchemaState:
        """Migrate to head; if another process created the schema meanwhile, accept theirs."""
        try:
            upgrade(self.engine)
        except SQLAlchemyError:
            state = schema_state(self.engine)
            if state.kind != "current":
                raise
            return state
        return schema_state(self.engine)

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return self._sessions()

    def _run(self, s: Session, run_id: int) -> Run:
        run = s.get(Run, run_id)
        if run is None:
            raise StoreError(f"no run with id {run_id}")
        return run

    # -- runs ---------------------------------------------------------------------------------
    def create_run(
        self,
        name: str,
        runtime: str,
        seed: int,
        config: dict[str, Any],
        model_spec: dict[str, Any] | None = None,
    ) -> int:
        """Insert a new running run owned by this process; return its id."""
        with self.session() as s, s.begin():
            run = Run(
                name=name,
                runtime=runtime,
                seed=seed,
                config=config,
                model_spec=model_spec,
                status="running",
                owner=this_process(),
            )
            s.add(run)
            s.flush()
            return run.id

    def claim_run(self, run_id: int, runtime: str) -> Run:
        """Take over a paused or interrupted run to resume it; refuse a finished one. A pause
        still queued is dropped (the resume supersedes it)."""
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            if run.status in FINISHED:
                raise StoreError(f"run {run_id} is {run.status}: there is nothing to resume")
            if run.status == "running" and _alive(run.owner):
                raise StoreError(f"run {run_id} is still running (driven by {run.owner})")
            run.status, run.owner, run.runtime, run.error = "running", this_process(), runtime, None
            # A pause queued before the stop (an interrupt's, say) is what stopped it, or was
            # overtaken by it: resuming supersedes it. Queued settings and aborts still apply.
            stale = select(Control).where(
                Control.run_id == run_id, Control.applied_at.is_(None), Control.command == "pause"
            )
            for control in s.scalars(stale):
                control.applied_at = utcnow()
            return run

    def finish_run(
        self, run_id: int, status: str, error: str | None = None, owner: str | None = None
    ) -> bool:
        """Record how a run ended (``completed``, ``failed``, ``aborted``) or ``paused``.
        With ``owner`` (the ``host:pid`` that claimed it), only while the run is still that
        driver's: False, and nothing written, once it is not."""
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            if owner is not None and run.owner != owner:
                return False
            run.status, run.error = status, error
            run.finished_at = utcnow() if status in FINISHED else None
            run.owner = None
            return True

    def check_owner(self, run_id: int, owner: str | None) -> None:
        """``NotOwner`` unless ``owner`` (None: anyone) still drives the run."""
        with self.session() as s:
            _check_owner(self._run(s, run_id), owner)

    def get_run(self, run_id: int) -> Run:
        """Load one run with its rounds and their clients; ``StoreError`` if there is none."""
        with self.session() as s:
            run = self._run(s, run_id)
            _ = [len(r.clients) for r in run.rounds]  # load while the session is open
            return run

    def list_runs(self) -> list[Run]:
        """All runs, newest first (with their rounds loaded)."""
        with self.session() as s:
            query = select(Run).options(selectinload(Run.rounds)).order_by(Run.id.desc())
            return list(s.scalars(query))

    # -- rounds and checkpoints ---------------------------------------------------------------
    def record_round(self, run_id: int, outcome: RoundOutcome, owner: str | None = None) -> None:
        """Write the round's checkpoint durably, then commit the round and its clients; with
        ``owner``, only while that driver still has the run (``NotOwner``: nothing is written,
        not even the checkpoint file a resumed run may write for the same round)."""
        self.check_owner(run_id, owner)
        path = checkpoint_path(self.checkpoint_root, run_id, outcome.number)
        sha = write_checkpoint_file(path, outcome.params, outcome.server_state)
        with self.session() as s, s.begin():
            _check_owner(self._run(s, run_id), owner)
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
                checkpoint_path=str(path),
                checkpoint_sha256=sha,
                metrics=dict(getattr(outcome, "metrics", {})) or None,
                evaluation=_evaluation_json(outcome),
            )
            row.clients = [
                ClientResult(
                    client_id=c.client_id,
                    node_id=str(c.node_id),
                    device_class=getattr(c, "device_class", None),
                    accepted=c.accepted,
                    num_examples=c.num_examples,
                    train_loss=c.train_loss,
                    seconds=c.seconds,
                    reason=c.reason,
                    bytes_up=c.bytes_up,
                    bytes_down=c.bytes_down,
                    metrics=dict(getattr(c, "metrics", {})) or None,
                )
                for c in outcome.clients
            ]
            s.add(row)

    def get_round(self, run_id: int, number: int | None = None) -> Round:
        """Round ``number`` of a run (default: the last committed one), with its clients."""
        with self.session() as s:
            run = self._run(s, run_id)
            query = select(Round).where(Round.run_id == run_id)
            if number is None:
                row = s.scalars(query.order_by(Round.number.desc()).limit(1)).first()
                if row is None:
                    raise StoreError(f"run {run_id} has no committed round yet")
            else:
                row = s.scalars(query.where(Round.number == number)).first()
                if row is None:
                    last = len(run.rounds)
                    raise StoreError(f"run {run_id} has no round {number} (rounds: 1..{last})")
            _ = len(row.clients)
            return row

    def load_checkpoint(self, run_id: int, number: int | None = None) -> tuple[Round, Checkpoint]:
        """A round's row and its checkpoint, verified against the recorded SHA-256."""
        row = self.get_round(run_id, number)
        if row.checkpoint_path is None:
            raise StoreError(f"run {run_id} round {row.number} has no checkpoint")
        return row, read_checkpoint(Path(row.checkpoint_path), row.checkpoint_sha256)

    # -- control commands ---------------------------------------------------------------------
    def queue_control(self, run_id: int, command: str, payload: dict | None = None) -> int:
        """Queue ``pause``, ``abort`` or ``set`` for the run's next round boundary.

        A paused run has no aggregator to read the queue: aborting it takes effect at once.
        """
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            if run.status in FINISHED:
                raise StoreError(f"run {run_id} is {run.status}: it takes no more commands")
            if command == "pause" and run.status == "paused":
                raise StoreError(f"run {run_id} is already paused")
            if command == "abort" and run.status == "paused":
                run.status, run.finished_at = "aborted", utcnow()
            control = Control(run_id=run_id, command=command, payload=payload)
            if run.status == "aborted":
                control.applied_at = utcnow()
            s.add(control)
            s.flush()
            return control.id

    def update_run_config(self, run_id: int, section: str, values: dict[str, Any]) -> None:
        """Merge ``values`` into the stored scenario's ``section`` (so a resume keeps them)."""
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            config = dict(run.config)
            config[section] = {**config.get(section, {}), **values}
            run.config = config  # a new dict: JSON columns track assignment, not mutation

    def pending_stop(self, run_id: int) -> bool:
        """Whether a ``pause`` or ``abort`` is queued for the run and not yet applied."""
        with self.session() as s:
            query = select(Control.id).where(
                Control.run_id == run_id,
                Control.applied_at.is_(None),
                Control.command.in_(("pause", "abort")),
            )
            return s.scalars(query.limit(1)).first() is not None

    def take_controls(
        self, run_id: int, round_number: int, owner: str | None = None
    ) -> list[Control]:
        """The run's pending commands, marked applied at ``round_number`` (one transaction);
        with ``owner``, ``NotOwner`` once that driver no longer has the run."""
        with self.session() as s, s.begin():
            _check_owner(self._run(s, run_id), owner)
            pending = list(
                s.scalars(
                    select(Control)
                    .where(Control.run_id == run_id, Control.applied_at.is_(None))
                    .order_by(Control.id)
                )
            )
            for control in pending:
                control.applied_at, control.applied_round = utcnow(), round_number
            return pending
