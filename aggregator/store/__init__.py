"""Durable storage of runs and rounds (SQLAlchemy; SQLite by default, PostgreSQL by URL)."""

from aggregator.store.store import (
    DB_ENV,
    DEFAULT_DB,
    NotOwner,
    Store,
    StoreError,
    resolve_url,
    this_process,
)

__all__ = ["DB_ENV", "DEFAULT_DB", "NotOwner", "Store", "StoreError", "resolve_url", "this_process"]
