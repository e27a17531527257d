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

from tests.requirements import missing

POSTGRES_ENV = "FEDCORE_TEST_POSTGRES"
REQUIRE_ENV = "FEDCORE_REQUIRE_POSTGRES"


def _postgres_url() -> str:
    admin = os.environ.get(POSTGRES_ENV)
    reason = f"no PostgreSQL server: set {POSTGRES_ENV} to an admin URL to run these tests"
    if not admin:
        missing(reason, REQUIRE_ENV)
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


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``write(package, {module: source}, entry_points={group: {name: "pkg.mod:attr"}})``:
    a package in a temporary folder on ``sys.path``; with ``entry_points`` also a
    ``*.dist-info`` there, so ``importlib.metadata`` sees it as an installed distribution.
    The package's modules are forgotten again after the test."""
    import importlib
    import sys
    import textwrap

    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def write(package: str, modules: dict[str, str],
              entry_points: dict[str, dict[str, str]] | None = None) -> None:
        folder = root / package
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
        for module, source in modules.items():
            (folder / f"{module}.py").write_text(textwrap.dedent(source))
        if entry_points:
            info = root / f"{package}-0.1.dist-info"
            info.mkdir(exist_ok=True)
            metadata = f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n"
            (info / "METADATA").write_text(metadata)
            lines = []
            for group, names in entry_points.items():
                lines.append(f"[{group}]")
                lines += [f"{name} = {value}" for name, value in names.items()]
            (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        written.append(package)
        importlib.invalidate_caches()

    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in written:
            del sys.modules[name]
