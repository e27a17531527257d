"""One-line errors with meaningful exit codes, instead of tracebacks for user mistakes."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from cli.render import plain

USAGE = 2  # bad input: a file, key, id or URL the user gave is wrong
FAILED = 1  # the job itself failed (e.g. a round could not produce a model)
STOPPED = 3  # an operator paused or aborted the run (its state is kept)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = USAGE) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(plain(message))}", markup=True)
    raise typer.Exit(code)


def stopped(message: str) -> NoReturn:
    """An operator stopped the run (paused or aborted): say so, exit ``STOPPED``."""
    err_console.print(plain(message), markup=False)
    raise typer.Exit(STOPPED)
