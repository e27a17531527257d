"""Schema versions: apply Alembic migrations, and refuse a store that is behind or ahead.

A fresh database is brought to the newest schema when fedcore first opens it; an existing one
is only migrated by ``fedcore db upgrade``, so an operator decides when a production store
changes. Opening a store that is already current reads its version row with SQLAlchemy alone:
Alembic (a quarter of a second to import) is loaded only to migrate or to judge an old revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import column, inspect, select, table

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).with_name("migrations")
HEAD_REVISION = "0005"  # the newest file in migrations/versions (a test checks Alembic agrees)
VERSION_TABLE = "alembic_version"


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision this fedcore knows, as Alembic's scripts say."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this fedcore knows."""
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: ``empty``, ``current``, ``behind``, ``ahead`` or ``foreign``."""

    kind: str
    revision: str | None
    head: str


def current_revision(connection: Connection, tables: set[str]) -> str | None:
    """The revision stamped in the database (None if it has no version table or row).

    One row is read directly; several (a branched history, which fedcore never makes) are
    left to Alembic, which refuses them.
    """
    if VERSION_TABLE not in tables:
        return None
    version = select(column("version_num")).select_from(table(VERSION_TABLE))
    rows = connection.execute(version).scalars().all()
    if len(rows) > 1:
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(connection).get_current_revision()
    return rows[0] if rows else None


def schema_state(engine: Engine) -> SchemaState:
    """Compare the database's revision with this fedcore's head."""
    head = HEAD_REVISION
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        revision = current_revision(connection, tables)
    if revision is None:
        return SchemaState("empty" if not tables else "foreign", None, head)
    if revision == head:
        return SchemaState("current", revision, head)
    if revision in known_revisions():
        return SchemaState("behind", revision, head)
    return SchemaState("ahead", revision, head)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction."""
    from alembic import command

    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
