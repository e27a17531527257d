"""One-line errors with meaningful exit codes, instead of tracebacks for user mistakes."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

USAGE = 2  # bad input: a file, key, id or URL the user gave is wrong
FAILED = 1  # the job itself failed (e.g. a round could not produce a model)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = USAGE) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True)
    raise typer.Exit(code)
