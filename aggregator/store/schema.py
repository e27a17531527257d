"""Schema versions: apply Alembic migrations, and refuse a store that is behind or ahead.

A fresh database is brought to the newest schema when fedcore first opens it; an existing one
is only migrated by ``fedcore db upgrade``, so an operator decides when a production store
changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def _config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision this fedcore knows."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every revision this fedcore knows."""
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: ``empty``, ``current``, ``behind``, ``ahead`` or ``foreign``."""

    kind: str
    revision: str | None
    head: str


def schema_state(engine: Engine) -> SchemaState:
    """Compare the database's revision with this fedcore's head."""
    head = head_revision()
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        tables = set(inspect(connection).get_table_names())
    if revision is None:
        return SchemaState("empty" if not tables else "foreign", None, head)
    if revision == head:
        return SchemaState("current", revision, head)
    if revision in known_revisions():
        return SchemaState("behind", revision, head)
    return SchemaState("ahead", revision, head)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` in one transaction."""
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
