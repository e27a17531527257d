"""``fedcore runs compare RUN RUN...``: runs side by side, and their accuracy curves overlaid.

The curves' x axis is simulated time when every run has it (a synchronous round and an
asynchronous server step are not the same unit, but a simulated second is), else the round;
``--x`` picks ``simulated``, ``round`` or ``wall`` (wall-clock seconds of the stored rounds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Db, Json
from cli.render import federated_summary, metric_text, untrusted
from cli.store_access import open_store

console = Console(highlight=False)

Axis = Literal["simulated", "round", "wall"]
AXES: dict[str, str] = {  # the x axis of the plot and its label
    "simulated": "simulated time (s)",
    "round": "round (server step for async runs)",
    "wall": "wall-clock time (s)",
}
SIMULATED = "sim_clock_s"  # a round's metric: the simulated clock when it was committed


def mode_of(run: Any) -> str:
    """``sync`` or ``async``: how a stored run trained."""
    return str(run.config.get("federation", {}).get("mode", "sync"))


def default_axis(runs: list[Any]) -> Axis:
    """Simulated time when every round of every run has it, else the round."""
    rounds = [r for run in runs for r in run.rounds]
    simulated = rounds and all(SIMULATED in (r.metrics or {}) for r in rounds)
    return "simulated" if simulated else "round"


def x_values(run: Any, axis: Axis) -> list[float]:
    """One x per stored round of ``run`` on ``axis`` (wall: the rounds' seconds summed)."""
    if axis == "round":
        return [float(r.number) for r in run.rounds]
    if axis == "simulated":
        return [float((r.metrics or {}).get(SIMULATED, float("nan"))) for r in run.rounds]
    total, out = 0.0, []
    for r in run.rounds:
        total += float(r.seconds or 0.0)
        out.append(total)
    return out


def final_figures(run: Any) -> dict[str, Any]:
    """A stored run's last test figure, best test figure and last federated evaluation."""
    rounds = list(run.rounds)
    tested = [r for r in rounds if r.test_accuracy is not None]
    evaluated = [(r.number, *federated_summary(r)) for r in rounds]
    evaluated = [e for e in evaluated if e[2]]
    loss = run.config.get("train", {}).get("loss", "cross_entropy")
    metric = evaluated[-1][1] if evaluated else ("mae" if loss == "mse" else "accuracy")
    best = None
    if tested:
        pick = max if metric == "accuracy" else min
        top = pick(tested, key=lambda r: r.test_accuracy)
        best = {"round": top.number, "value": top.test_accuracy}
    return {
        "metric": metric,
        "final_test": tested[-1].test_accuracy if tested else None,
        "best_test": best,
        "federated": dict(evaluated[-1][2], round=evaluated[-1][0]) if evaluated else None,
    }


def compare(
    run_ids: Annotated[list[int], typer.Argument(help="Two or more run ids.")],
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the overlaid accuracy curves (PNG).")
    ] = None,
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            help="The plot's x axis: simulated (default when every run has simulated time), "
            "round, or wall (wall-clock seconds).",
        ),
    ] = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Compare runs: final and best test figures, the clients' evaluation, curves overlaid."""
    from aggregator.store import StoreError

    if len(set(run_ids)) < 2:
        fail("compare needs at least two different run ids")
    if plot is not None and not plot.parent.is_dir():
        fail(f"--plot: directory does not exist: {plot.parent}")
    if x is not None and x not in AXES:
        fail(f"--x: expected one of {', '.join(AXES)}, got {x!r}")
    store = open_store(db)
    try:
        runs = [store.get_run(run_id) for run_id in run_ids]
    except StoreError as exc:
        fail(str(exc))
    rows = []
    for run in runs:
        federation = run.config.get("federation", {})
        rows.append({
            "run_id": run.id, "name": run.name, "status": run.status, "mode": mode_of(run),
            "strategy": federation.get("strategy"), "rounds": len(run.rounds),
            **final_figures(run),
        })
    axis: Axis = x if x is not None else default_axis(runs)  # type: ignore[assignment]
    untimed = [str(run.id) for run in runs
               if not any(SIMULATED in (r.metrics or {}) for r in run.rounds)]
    if plot is not None and axis == "simulated" and untimed:
        fail(f"--x simulated: run {', '.join(untimed)} has no simulated time (simulate with "
             "a [population] or mode = \"async\"; or plot --x round or --x wall)")
    if plot is not None:
        _plot(runs, plot, axis)
    if as_json:
        print(json.dumps({"runs": rows, "plot": str(plot) if plot else None,
                          "x": axis if plot else None}))
        return
    table = Table(title="runs compared")
    for column in ("run", "name", "mode", "strategy", "rounds", "final test",
                   "best test (round)",
                   "clients' (weighted)", "clients' p10", "worst 10 %"):
        left = column in ("name", "mode", "strategy")
        table.add_column(column, justify="left" if left else "right")
    for row in rows:
        m, fed, best = row["metric"], row["federated"] or {}, row["best_test"]
        table.add_row(
            str(row["run_id"]), untrusted(row["name"]), untrusted(row["mode"]),
            untrusted(row["strategy"]),
            str(row["rounds"]),
            metric_text(row["final_test"], m),
            f"{metric_text(best['value'], m)} ({best['round']})" if best else "-",
            metric_text(fed.get("metric"), m), metric_text(fed.get("p10"), m),
            metric_text(fed.get("worst_decile"), m),
        )
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot} (x: {AXES[axis]})")


def _plot(runs: list[Any], path: Path, axis: Axis) -> None:
    try:
        import matplotlib
    except ImportError:
        fail("--plot needs matplotlib: pip install 'fedcore[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        xs = x_values(run, axis)
        label = f"{run.id} {run.name} ({mode_of(run)})"
        tested = [(x, r.test_accuracy) for x, r in zip(xs, run.rounds, strict=True)
                  if r.test_accuracy is not None]
        style = "-o" if mode_of(run) == "sync" else "-"
        if tested:
            line = ax.plot(*zip(*tested, strict=True), style, markersize=3, label=label)
        fed = [(x, federated_summary(r)[1]) for x, r in zip(xs, run.rounds, strict=True)]
        fed = [(x, s) for x, s in fed if s]
        if fed:
            color = line[0].get_color() if tested else None
            ax.plot([x for x, _ in fed], [s["metric"] for _, s in fed], linestyle="--",
                    color=color, label=f"{run.id} clients")
    ax.set(xlabel=AXES[axis], ylabel="test figure", title="runs compared")
    if axis == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
