"""``fedcore runs``: list and inspect the runs in the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Db, Json
from cli.render import RoundRow, round_table

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)


def _open(db: str | None):  # noqa: ANN202 - returns a Store, imported lazily
    from aggregator.store import Store, StoreError

    try:
        return Store(db)
    except StoreError as exc:
        fail(str(exc))


@app.command("list")
def list_runs(db: Db = None, as_json: Json = False) -> None:
    """List stored runs, newest first."""
    runs = _open(db).list_runs()
    if as_json:
        print(json.dumps([_run_dict(r) for r in runs]))
        return
    table = Table()
    for column in ("id", "name", "backend", "status", "created"):
        table.add_column(column)
    for r in runs:
        table.add_row(str(r.id), r.name, r.backend, r.status, f"{r.created_at:%Y-%m-%d %H:%M:%S}")
    console.print(table)


@app.command("show")
def show_run(
    run_id: Annotated[int, typer.Argument(help="Run id (see `fedcore runs list`).")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Show one run and its rounds."""
    from aggregator.store import StoreError

    try:
        run = _open(db).get_run(run_id)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        data = _run_dict(run)
        data["rounds"] = [
            {
                "number": r.number,
                "selected": r.num_selected,
                "accepted": r.num_accepted,
                "train_loss": r.train_loss,
                "test_loss": r.test_loss,
                "test_accuracy": r.test_accuracy,
                "seconds": r.seconds,
            }
            for r in run.rounds
        ]
        print(json.dumps(data))
        return
    rows = [
        RoundRow(r.number, r.num_selected, r.num_accepted, r.train_loss, r.test_accuracy, r.seconds)
        for r in run.rounds
    ]
    console.print(
        round_table(rows, title=f"run {run.id} · {run.name} · {run.backend} · {run.status}")
    )
    if run.error:
        console.print(f"error: {run.error}")


def _run_dict(run) -> dict:  # noqa: ANN001 - a store Run row
    return {
        "id": run.id,
        "name": run.name,
        "backend": run.backend,
        "status": run.status,
        "seed": run.seed,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
    }
