"""Options shared by several commands (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

Db = Annotated[
    str | None,
    typer.Option(
        "--db", help="SQLite file or SQLAlchemy URL [default: $FEDCORE_DB or ./fedcore.db]."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
