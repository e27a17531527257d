"""Durable storage of runs and rounds (SQLAlchemy; SQLite by default, PostgreSQL by URL)."""

from aggregator.store.store import DB_ENV, DEFAULT_DB, Store, StoreError, resolve_url

__all__ = ["DB_ENV", "DEFAULT_DB", "Store", "StoreError", "resolve_url"]
