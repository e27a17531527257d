"""``fedcore simulate SCENARIO``: run a scenario with a live progress bar and round table."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.errors import FAILED, fail
from cli.options import Db, Json
from cli.render import RoundRow, round_table

console = Console(highlight=False)


def simulate(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario file (TOML), e.g. simulations/quickstart.toml.")
    ],
    backend: Annotated[
        str,
        typer.Option(
            "--backend", "-b", help="inprocess (fast, one process) or flower (Ray runtime)."
        ),
    ] = "inprocess",
    db: Db = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Override federation.rounds.")
    ] = None,
    as_json: Json = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Flower's and Ray's own logs.")
    ] = False,
    device: Annotated[
        str,
        typer.Option("--device", help="Where the server averages: auto (GPU if usable), cpu, gpu."),
    ] = "auto",
    secagg: Annotated[
        bool | None,
        typer.Option("--secagg/--no-secagg", help="Override secure aggregation (SecAgg+)."),
    ] = None,
) -> None:
    """Run a federated simulation and store every round."""
    from aggregator.rounds import RoundFailed, RoundOutcome
    from aggregator.store import Store, StoreError
    from simulations.backends import BACKENDS
    from simulations.harness import prepare_scenario
    from simulations.lifecycle import run_scenario
    from simulations.scenario import ScenarioError, load_scenario

    if backend not in BACKENDS:
        fail(f"--backend: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    from aggregator.backend import BackendUnavailable, select_backend

    try:
        select_backend(device)
    except (ValueError, BackendUnavailable) as exc:
        from rich.markup import escape

        fail(f"--device: {escape(str(exc))}")
    try:
        spec = load_scenario(scenario)
        if secagg is not None:
            from simulations.secagg_section import with_secagg

            spec = with_secagg(spec, secagg)
        if rounds is not None:
            spec = spec.model_copy(
                update={"federation": spec.federation.model_copy(update={"rounds": rounds})}
            )
        prepared = prepare_scenario(spec)
        store = Store(db)
    except (ScenarioError, StoreError) as exc:
        fail(str(exc))

    rows: list[RoundRow] = []
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
    )
    task = progress.add_task(f"{spec.name} ({backend})", total=spec.federation.rounds)

    def view() -> Group:
        return Group(round_table(rows), progress)

    live = None if as_json else Live(view(), console=console, refresh_per_second=4)

    def on_round(outcome: RoundOutcome) -> None:
        rows.append(
            RoundRow(
                outcome.number,
                len(outcome.clients),
                outcome.num_accepted,
                outcome.train_loss,
                outcome.test_accuracy,
                outcome.seconds,
            )
        )
        progress.advance(task)
        if live is not None:
            live.update(view())

    try:
        with live or contextlib.nullcontext():
            result = run_scenario(
                prepared,
                backend,
                on_round=on_round,
                store=store,
                flower_verbose=verbose,
                device=device,
            )
    except RoundFailed as exc:
        fail(str(exc), code=FAILED)

    summary = {
        "run_id": result.run_id,
        "scenario": spec.name,
        "backend": backend,
        "rounds": len(result.rounds),
        "final_test_accuracy": result.final_accuracy,
        "final_test_loss": result.rounds[-1].test_loss,
        "seconds": round(result.seconds, 3),
        "db": store.url,
    }
    language_model = prepared.data.sequence_targets  # accuracy is next-word accuracy
    if language_model:
        from fedcore.evaluate import perplexity

        summary["final_test_perplexity"] = perplexity(result.rounds[-1].test_loss)
    if as_json:
        print(json.dumps(summary))
        return
    if not console.is_terminal:
        console.print()  # Live leaves the cursor after the bar when output is not a terminal
    ppl = f", perplexity {summary['final_test_perplexity']:.1f}" if language_model else ""
    console.print(
        f"run {result.run_id}: final test accuracy {100 * result.final_accuracy:.2f} %{ppl} "
        f"after {len(result.rounds)} rounds in {result.seconds:.1f} s (stored in {store.url})"
    )
