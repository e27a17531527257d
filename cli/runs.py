"""``fedcore runs``: list, inspect, pause, resume, abort, re-configure and export runs.

Pause, abort and set are queued in the store and applied by the aggregator at the next round
boundary; resume continues a paused or interrupted run from its last committed round.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail, run_stops
from cli.live import RoundProgress, print_summary, run_summary
from cli.options import Db, Json, OldBackend, Runtime, output_file, output_format, renamed
from cli.render import RoundRow, csv_cell, round_table, untrusted
from cli.store_access import open_store, round_dict, run_dict

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False)

RunId = Annotated[int, typer.Argument(help="Run id (see `fedcore runs list`).")]


@app.command("list")
def list_runs(db: Db = None, as_json: Json = False) -> None:
    """List stored runs, newest first."""
    runs = open_store(db).list_runs()
    if as_json:
        print(json.dumps([run_dict(r) for r in runs]))
        return
    from cli.compare import final_figures
    from cli.render import metric_text

    table = Table()
    for column in ("id", "name", "runtime", "status", "rounds", "final", "created"):
        table.add_column(column)
    for r in runs:
        data = run_dict(r)
        done = f"{data['rounds']}/{data['num_rounds']}" if data["num_rounds"] else data["rounds"]
        figures = final_figures(r)
        final = figures["final_test"]
        if final is None and figures["federated"]:
            final = figures["federated"]["metric"]
        table.add_row(
            str(r.id),
            untrusted(r.name),
            r.runtime,
            r.status,
            str(done),
            metric_text(final, figures["metric"]),
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


@app.command("show")
def show_run(run_id: RunId, db: Db = None, as_json: Json = False) -> None:
    """Show one run and its rounds."""
    from aggregator.store import StoreError

    try:
        run = open_store(db).get_run(run_id)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({**run_dict(run), "rounds": [round_dict(r) for r in run.rounds]}))
        return
    rows = [RoundRow.of(r) for r in run.rounds]
    title = f"run {run.id} · {untrusted(run.name)} · {run.runtime} · {run.status}"
    console.print(round_table(rows, title=title))
    rejected = [(r.number, c) for r in run.rounds for c in r.clients if not c.accepted]
    for number, c in rejected[:20]:
        console.print(f"round {number}: client {c.client_id} rejected: {untrusted(c.reason)}")
    if len(rejected) > 20:
        console.print(f"… and {len(rejected) - 20} more rejections (`fedcore rounds show`)")
    if run.error:
        console.print(f"error: {untrusted(run.error)}")


def _queue(run_id: int, db: str | None, command: str, payload: dict | None, as_json: bool) -> None:
    """Queue a command; report the run's status after it (a paused run aborts at once)."""
    from aggregator.store import StoreError

    try:
        store = open_store(db)
        control_id = store.queue_control(run_id, command, payload)
        status = store.get_run(run_id).status
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "command": command,
                    "payload": payload,
                    "control_id": control_id,
                    "status": status,
                }
            )
        )
        return
    what = f"{command} {payload}" if payload else command
    when = "applied" if status == "aborted" else "queued for the next round boundary"
    console.print(f"run {run_id}: {what} {when} (status: {status})")


@app.command("pause")
def pause_run(run_id: RunId, db: Db = None, as_json: Json = False) -> None:
    """Pause a running run at the next round boundary (it keeps its state)."""
    _queue(run_id, db, "pause", None, as_json)


@app.command("abort")
def abort_run(run_id: RunId, db: Db = None, as_json: Json = False) -> None:
    """Abort a run at the next round boundary (a paused run is aborted at once)."""
    _queue(run_id, db, "abort", None, as_json)


@app.command("set")
def set_config(
    run_id: RunId,
    settings: Annotated[
        list[str], typer.Argument(help="KEY=VALUE pairs, e.g. learning_rate=0.01 local_epochs=2.")
    ],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Change the training config from the next round on."""
    from simulations.lifecycle import SETTABLE, check_settings

    pairs: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in SETTABLE:
            fail(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(SETTABLE)}")
        pairs[key] = value
    try:
        payload = check_settings(pairs)
    except ValueError as exc:
        fail(str(exc))
    _queue(run_id, db, "set", payload, as_json)


@app.command("resume")
def resume(
    run_id: RunId,
    db: Db = None,
    runtime: Runtime = None,
    old_backend: OldBackend = None,
    as_json: Json = False,
) -> None:
    """Continue a paused or interrupted run from its last committed round."""
    from aggregator.store import StoreError
    from aggregator.store.checkpoints import CheckpointError
    from simulations.interrupts import Interrupts
    from simulations.lifecycle import resume_run
    from simulations.runtimes import RUNTIMES
    from simulations.scenario import ScenarioError

    runtime = renamed(runtime, old_backend, "--runtime", "--backend")
    if runtime is not None and runtime not in RUNTIMES:
        fail(f"--runtime: unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    store = open_store(db)
    interrupts = Interrupts()
    with run_stops(interrupts):
        try:
            run = store.get_run(run_id)
            if run.status in ("completed", "failed", "aborted"):
                fail(f"run {run_id} is {run.status}: there is nothing to resume")
            if runtime is None and run.runtime not in RUNTIMES:  # e.g. a deployment
                fail(
                    f"run {run_id} ran as a {run.runtime}: continue it with `fedcore server "
                    f"SCENARIO --resume {run_id}`, or here as a simulation with --runtime "
                    "inprocess"
                )
            total = run.config["federation"]["rounds"]
            title = f"{run.name} (resume run {run_id})"
            with interrupts, RoundProgress(title, total, done=len(run.rounds), quiet=as_json) as ui:
                result = resume_run(
                    store, run_id, runtime, on_round=ui.on_round, interrupts=interrupts
                )
        except (StoreError, CheckpointError, ScenarioError) as exc:
            fail(str(exc))
    summary = run_summary(store.get_run(run_id), store.url, result.seconds)
    print_summary(summary, as_json)


@app.command("export")
def export_run(
    run_id: RunId,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write ('-': stdout).")] = Path(
        "-"
    ),
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="json or csv [default: from the file's extension, else json]."
        ),
    ] = None,
    db: Db = None,
) -> None:
    """Export a run's rounds and per-client results (JSON, or CSV with one row per client)."""
    from aggregator.store import StoreError

    fmt = output_format(out, fmt, {".json": "json", ".csv": "csv"}, "json")
    if str(out) != "-":
        output_file(out)
    try:
        run = open_store(db).get_run(run_id)
    except StoreError as exc:
        fail(str(exc))
    stream = sys.stdout if str(out) == "-" else open(out, "w", newline="")  # noqa: SIM115
    try:
        if fmt == "json":
            data = {**run_dict(run), "config": run.config}
            data["rounds"] = [round_dict(r, clients=True) for r in run.rounds]
            json.dump(data, stream, indent=1)
            stream.write("\n")
        else:
            writer = csv.writer(stream)
            header = [
                "round",
                "client_id",
                "accepted",
                "num_examples",
                "train_loss",
                "seconds",
                "bytes_up",
                "bytes_down",
                "reason",
                "round_test_accuracy",
            ]
            writer.writerow(header)
            for r in run.rounds:
                for c in r.clients:
                    writer.writerow(
                        csv_cell(cell)
                        for cell in [
                            r.number,
                            c.client_id,
                            c.accepted,
                            c.num_examples,
                            c.train_loss,
                            c.seconds,
                            c.bytes_up,
                            c.bytes_down,
                            c.reason or "",
                            r.test_accuracy,
                        ]
                    )
    finally:
        if stream is not sys.stdout:
            stream.close()
