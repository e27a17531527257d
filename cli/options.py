"""Options shared by several commands (Typer ``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Db = Annotated[
    str | None,
    typer.Option(
        "--db", help="SQLite file or SQLAlchemy URL [default: $FEDCORE_DB or ./fedcore.db]."
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
Runtime = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        "-r",
        help="Where the ClientApps run: inprocess (fast, one process) or flower (Flower's "
        "simulation runtime, Ray).",
    ),
]
OldBackend = Annotated[str | None, typer.Option("--backend", "-b", hidden=True)]  # --runtime
DeviceClass = Annotated[
    str | None,
    typer.Option(
        "--device-class",
        "--device",
        help="Device class (see `fedcore profiles list`): its memory budget.",
    ),
]


def renamed(new_value: str | None, old_value: str | None, new: str, old: str) -> str | None:
    """The value of option ``new`` given under its old spelling ``old`` (kept one release):
    say it is deprecated; both given, refuse."""
    if old_value is None:
        return new_value
    from cli.errors import err_console, fail

    if new_value is not None:
        fail(f"{old}: renamed {new}; give one of them")
    err_console.print(f"warning: {old} is deprecated, use {new}", markup=False)
    return old_value


def server_environment() -> None:
    """Refuse a malformed server setting from the environment (``$FEDCORE_AGG_THREADS``)
    before anything starts: one line, exit 2."""
    from aggregator.backend import SettingError, agg_threads
    from cli.errors import fail

    try:
        agg_threads()
    except SettingError as exc:
        fail(str(exc))


def output_file(out: Path, option: str = "--out") -> None:
    """Refuse an output path that cannot be written as a file (one line, exit 2)."""
    from cli.errors import fail

    if out.is_dir():
        fail(f"{option}: {out} is a folder; name a file to write")
    if not out.parent.is_dir():
        fail(f"{option}: directory does not exist: {out.parent}")


def output_format(out: Path, fmt: str | None, formats: dict[str, str], default: str) -> str:
    """The format to write: ``--format``, else the one ``out``'s extension names, else
    ``default``; a ``--format`` that contradicts a known extension is refused."""
    from cli.errors import fail

    known = sorted(set(formats.values()))
    if fmt is not None and fmt not in known:
        fail(f"--format: expected one of {', '.join(known)}, got {fmt!r}")
    implied = formats.get(out.suffix.lower())
    if fmt is not None and implied is not None and implied != fmt:
        fail(f"--format {fmt} contradicts the file name {out.name} ({implied}); drop one of them")
    return fmt or implied or default
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Change a scenario key, validated like the file: --set train.local_epochs=2 "
        "(repeatable; VALUE is a TOML value or a bare word).",
    ),
]
