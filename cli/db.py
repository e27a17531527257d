"""``fedcore db``: the store's schema version, and applying migrations."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from cli.errors import fail
from cli.options import Db, Json
from cli.store_access import open_store

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


@app.command("upgrade")
def upgrade(db: Db = None, as_json: Json = False) -> None:
    """Apply the migrations a store is missing (a new store is created at the newest schema)."""
    from aggregator.store.schema import head_revision

    store = open_store(db, migrate=True)
    if as_json:
        print(json.dumps({"url": store.url, "state": "current", "revision": head_revision()}))
        return
    console.print(f"{store.url}: schema is current ({head_revision()})")


@app.command("status")
def status(db: Db = None, as_json: Json = False) -> None:
    """Show the store's schema revision against the one this fedcore needs."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from aggregator.store import StoreError, resolve_url
    from aggregator.store.schema import schema_state
    from aggregator.store.store import parse_url, require_store

    url = resolve_url(db)
    try:
        require_store(parse_url(url))
    except StoreError as exc:
        fail(str(exc))
    try:
        state = schema_state(create_engine(url))
    except (SQLAlchemyError, ImportError) as exc:
        fail(f"cannot open database {url}: {str(exc).strip().splitlines()[0]}")
    if as_json:
        print(
            json.dumps(
                {"url": url, "state": state.kind, "revision": state.revision, "head": state.head}
            )
        )
        return
    console.print(f"{url}: {state.kind} (revision {state.revision}, this fedcore: {state.head})")
