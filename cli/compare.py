"""``fedcore runs compare RUN RUN...``: runs side by side, and their accuracy curves overlaid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Db, Json
from cli.render import federated_summary, metric_text, untrusted
from cli.store_access import open_store

console = Console(highlight=False)


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
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Compare runs: final and best test figures, the clients' evaluation, curves overlaid."""
    from aggregator.store import StoreError

    if len(set(run_ids)) < 2:
        fail("compare needs at least two different run ids")
    if plot is not None and not plot.parent.is_dir():
        fail(f"--plot: directory does not exist: {plot.parent}")
    store = open_store(db)
    try:
        runs = [store.get_run(run_id) for run_id in run_ids]
    except StoreError as exc:
        fail(str(exc))
    rows = []
    for run in runs:
        federation = run.config.get("federation", {})
        rows.append({
            "run_id": run.id, "name": run.name, "status": run.status,
            "strategy": federation.get("strategy"), "rounds": len(run.rounds),
            **final_figures(run),
        })
    if plot is not None:
        _plot(runs, plot)
    if as_json:
        print(json.dumps({"runs": rows, "plot": str(plot) if plot else None}))
        return
    table = Table(title="runs compared")
    for column in ("run", "name", "strategy", "rounds", "final test", "best test (round)",
                   "clients' (weighted)", "clients' p10", "worst 10 %"):
        table.add_column(column, justify="left" if column in ("name", "strategy") else "right")
    for row in rows:
        m, fed, best = row["metric"], row["federated"] or {}, row["best_test"]
        table.add_row(
            str(row["run_id"]), untrusted(row["name"]), untrusted(row["strategy"]),
            str(row["rounds"]),
            metric_text(row["final_test"], m),
            f"{metric_text(best['value'], m)} ({best['round']})" if best else "-",
            metric_text(fed.get("metric"), m), metric_text(fed.get("p10"), m),
            metric_text(fed.get("worst_decile"), m),
        )
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot}")


def _plot(runs: list[Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        fail("--plot needs matplotlib: pip install 'fedcore[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        tested = [(r.number, r.test_accuracy) for r in run.rounds if r.test_accuracy is not None]
        if tested:
            line = ax.plot(*zip(*tested, strict=True), marker="o", label=f"{run.id} {run.name}")
        fed = [(r.number, federated_summary(r)[1]) for r in run.rounds]
        fed = [(n, s) for n, s in fed if s]
        if fed:
            color = line[0].get_color() if tested else None
            ax.plot([n for n, _ in fed], [s["metric"] for _, s in fed], linestyle="--",
                    color=color, label=f"{run.id} clients")
    ax.set(xlabel="round", ylabel="test figure", title="runs compared")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
