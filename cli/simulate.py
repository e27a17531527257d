"""``fedcore simulate SCENARIO``: run a scenario with a live progress bar and round table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail, run_stops, stop_if_interrupted
from cli.live import RoundProgress, print_summary, run_summary
from cli.options import Db, Json, OldBackend, Runtime, Sets, renamed, server_environment


def simulate(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario file (TOML), e.g. simulations/quickstart.toml.")
    ],
    runtime: Runtime = None,
    old_backend: OldBackend = None,
    db: Db = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Override federation.rounds.")
    ] = None,
    as_json: Json = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Flower's and Ray's own logs.")
    ] = False,
    array_backend: Annotated[
        str | None,
        typer.Option(
            "--array-backend",
            help="Where the server averages: auto (CuPy on a usable GPU, else numpy), cpu, gpu "
            "[default: auto].",
        ),
    ] = None,
    old_device: Annotated[str | None, typer.Option("--device", hidden=True)] = None,
    secagg: Annotated[
        bool | None,
        typer.Option("--secagg/--no-secagg", help="Override secure aggregation (SecAgg+)."),
    ] = None,
    sets: Sets = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Folder for metrics.json, rounds.csv and PNG plots (default: next to the "
            "run's checkpoints, <checkpoints>/run-<id>/report).",
        ),
    ] = None,
) -> None:
    """Run a federated simulation and store every round."""
    from aggregator.store import Store, StoreError
    from simulations.interrupts import Interrupts
    from simulations.lifecycle import run_scenario
    from simulations.prepare import prepare_scenario
    from simulations.runtimes import RUNTIMES
    from simulations.scenario import ScenarioError, load_scenario

    runtime = renamed(runtime, old_backend, "--runtime", "--backend") or "inprocess"
    array_backend = renamed(array_backend, old_device, "--array-backend", "--device") or "auto"
    if runtime not in RUNTIMES:
        fail(f"--runtime: unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if runtime == "flower" and importlib.util.find_spec("ray") is None:
        fail("--runtime flower needs Flower's simulation runtime: pip install 'fedcore[sim]'")
    from aggregator.backend import BackendUnavailable, select_backend

    server_environment()
    try:
        select_backend(array_backend)
    except (ValueError, BackendUnavailable) as exc:
        from rich.markup import escape

        fail(f"--array-backend: {escape(str(exc))}")
    interrupts = Interrupts()
    interrupts.preparing = True  # Ctrl-C now: stop once prepared, nothing stored
    with run_stops(interrupts), interrupts:
        try:
            spec = load_scenario(scenario, sets or ())
            if secagg is not None:
                from simulations.scenario import with_secagg

                spec = with_secagg(spec, secagg)
            if rounds is not None:
                fed = spec.federation.model_copy(update={"rounds": rounds})
                spec = spec.model_copy(update={"federation": fed})
            prepared = prepare_scenario(spec, source=str(scenario))
            store = Store(db)
        except (ScenarioError, StoreError) as exc:
            fail(str(exc))
        stop_if_interrupted(interrupts)
        title = f"{spec.name} ({runtime})"
        with RoundProgress(title, spec.federation.rounds, quiet=as_json) as ui:
            result = run_scenario(
                prepared,
                runtime,
                on_round=ui.on_round,
                store=store,
                flower_verbose=verbose,
                array_backend=array_backend,
                interrupts=interrupts,
            )
    from simulations.reports import write_report

    folder = report or store.checkpoint_root / f"run-{result.run_id}" / "report"
    written = write_report(result, folder)
    summary = run_summary(
        store.get_run(result.run_id),
        store.url,
        result.seconds,
        prepared.data.sequence_targets,
        result.initial_test_loss,
    )
    summary["report"] = [str(path) for path in written]
    print_summary(summary, as_json)
