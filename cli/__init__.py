"""The ``fedcore`` command. Subcommands import what they need lazily, so ``--help`` is quick.

``main`` is the installed script: a device install (``pip install fedcore``, without the
``server`` extra) has no Typer, Flower or SQLAlchemy, and gets one line saying what to run
instead, not a traceback.
"""

from __future__ import annotations

import sys

# top-level modules of the `server` extra that `cli.main` and its commands import
SERVER_MODULES = frozenset(
    {"typer", "click", "rich", "flwr", "sqlalchemy", "alembic", "array_api_compat", "scipy"}
)
DEVICE_INSTALL = (
    "fedcore: {missing} is not installed: this is a device install. On a device run "
    "`fedcore-device` (`fedcore-device --help`); for the server, simulations and the store "
    "install the server parts: pip install 'fedcore[server]'"
)


def main() -> None:
    """Run the ``fedcore`` command (exit 2 with one line where the server parts are missing)."""
    try:
        from cli.main import app
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in SERVER_MODULES:
            raise
        print(DEVICE_INSTALL.format(missing=missing), file=sys.stderr)
        raise SystemExit(2) from None
    app()
