"""Shared fixtures: a fresh database URL per test, on SQLite and (when there is one) PostgreSQL.

PostgreSQL tests use ``$FEDCORE_TEST_POSTGRES`` (an admin URL such as
``postgresql+psycopg:///postgres?host=/var/run/postgresql``) and make one throw-away database
per test. Without it they skip, unless ``FEDCORE_REQUIRE_POSTGRES=1`` (set by CI) turns the skip
into a failure.
"""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_ENV = "FEDCORE_TEST_POSTGRES"
REQUIRE_ENV = "FEDCORE_REQUIRE_POSTGRES"


def _postgres_url() -> str:
    admin = os.environ.get(POSTGRES_ENV)
    reason = f"no PostgreSQL server: set {POSTGRES_ENV} to an admin URL to run these tests"
    if not admin:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return admin


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL of an empty database, once per engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(_postgres_url())
    name = f"fedcore_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
