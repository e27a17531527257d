"""Reports of a simulated run: a JSON and a CSV metrics file, and PNG plots, side by side.

``write_report(result, folder)`` writes ``metrics.json`` (per round, with each client's
federated evaluation, and per device class), ``rounds.csv`` and, when matplotlib is installed
(the ``plot`` extra), the figures that fit the run: ``accuracy.png`` (the server's test
figure and the clients' weighted mean with its p10-p90 band, vs round and, with a simulated
population, vs simulated time), ``device_classes.png`` (participation, dropouts and
rejections by device class, when clients report one) and ``time_breakdown.png`` (simulated
compute vs network per round, when there is a population).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from simulations.clock import DEADLINE, DROPPED

ROUND_FIELDS = (
    "round", "selected", "accepted", "train_loss", "test_loss", "test_accuracy", "seconds",
    "sim_round_s", "sim_clock_s", "available", "energy_j", "compute_s_mean", "network_s_mean",
    "fed_clients", "fed_loss", "fed_metric", "fed_p10", "fed_median", "fed_p90",
    "fed_worst_decile",
)  # fmt: skip
FED_KEYS = ("clients", "loss", "metric", "p10", "median", "p90", "worst_decile")


def outcome_kind(client: Any) -> str:
    """accepted | dropped | deadline | memory | over-selected | rejected."""
    if client.accepted:
        return "accepted"
    reason = client.reason or ""
    if DROPPED in reason:
        return "dropped"
    if DEADLINE in reason:
        return "deadline"
    if "memory:" in reason:
        return "memory"
    if "over-selected" in reason:
        return "over-selected"
    return "rejected"


def round_figures(r: Any) -> dict[str, Any]:
    """A round's own figures: clients selected and accepted, losses, the server's test."""
    return {
        "round": r.number,
        "selected": r.num_selected,
        "accepted": r.num_accepted,
        "train_loss": r.train_loss,
        "test_loss": r.test_loss,
        "test_accuracy": r.test_accuracy,
        "seconds": r.seconds,
    }


def round_rows(rounds: list[Any]) -> list[dict[str, float | None]]:
    """One flat row per round (``ROUND_FIELDS``; ``fed_*`` None in rounds not evaluated)."""
    rows = []
    for r in rounds:
        evaluation = getattr(r, "evaluation", None)
        summary = evaluation.summary if evaluation is not None else {}
        row = round_figures(r)
        row.update({f"fed_{k}": summary.get(k) for k in FED_KEYS})
        row.update({k: r.metrics.get(k, 0.0) for k in ROUND_FIELDS if k not in row})
        rows.append(row)
    return rows


def device_summary(rounds: list[Any]) -> dict[str, dict[str, float]]:
    """Per device class over the run: selections by outcome, energy, simulated seconds."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rounds:
        for c in r.clients:
            if c.device_class is None:  # a run without device classes has no such table
                continue
            row = table[c.device_class]
            row["selected"] += 1
            row[outcome_kind(c)] += 1
            row["energy_j"] += c.metrics.get("energy_j", 0.0)
            row["sim_seconds"] += c.metrics.get("sim_seconds", 0.0)
    return {name: dict(values) for name, values in sorted(table.items())}


def write_report(result: Any, folder: str | Path) -> list[Path]:
    """Write the metrics files and plots of ``result`` (a ``SimulationResult``) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = round_rows(result.rounds)
    devices = device_summary(result.rounds)
    metrics = {
        "scenario": result.scenario.name,
        "runtime": result.runtime,
        "run_id": result.run_id,
        "wall_seconds": result.seconds,
        "rounds": rows,
        "evaluation": {
            str(r.number): r.evaluation.to_json() for r in result.rounds
            if getattr(r, "evaluation", None) is not None
        },
        "device_classes": devices,
    }
    paths = [folder / "metrics.json", folder / "rounds.csv"]
    paths[0].write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=ROUND_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib
    except ImportError:
        return paths
    matplotlib.use("Agg")
    evaluated = [r.evaluation for r in result.rounds if getattr(r, "evaluation", None)]
    metric = evaluated[0].metric if evaluated else "accuracy"
    return paths + plot(rows, devices, folder, metric)


def plot(rows: list[dict[str, Any]], devices: dict[str, dict[str, float]], folder: Path,
         metric: str = "accuracy") -> list[Path]:
    """The figures that fit the run (see the module docstring); returns their paths."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = []
    simulated = any(r["sim_clock_s"] for r in rows)
    fig, axes = plt.subplots(1, 2 if simulated else 1, figsize=(10 if simulated else 6, 4),
                             squeeze=False)
    scale, unit = (100, "%") if metric == "accuracy" else (1, "")
    label = f"{metric} ({unit})" if unit else metric
    for ax, xs, xlabel in zip(
        axes[0],
        ([r["round"] for r in rows], [r["sim_clock_s"] / 60 for r in rows]),
        ("round", "simulated time (min)"),
        strict=False,
    ):
        _accuracy_panel(ax, rows, xs, scale)
        ax.set(xlabel=xlabel, ylabel=label, title=f"{metric} vs {xlabel.split(' (')[0]}")
        if xlabel == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    out.append(_save(fig, folder / "accuracy.png"))

    if devices:
        kinds = ("accepted", "dropped", "deadline", "memory", "over-selected", "rejected")
        names = list(devices)
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
        bottom = [0.0] * len(names)
        for kind in kinds:
            values = [devices[n].get(kind, 0.0) for n in names]
            if any(values):
                ax.bar(names, values, bottom=bottom, label=kind)
                bottom = [x + y for x, y in zip(bottom, values, strict=True)]
        ax.set(ylabel="client-rounds", title="participation by device class")
        ax.tick_params(axis="x", rotation=30)
        ax.legend()
        out.append(_save(fig, folder / "device_classes.png"))

    compute = [r["compute_s_mean"] for r in rows]
    network = [r["network_s_mean"] for r in rows]
    if any(compute) or any(network):
        rounds = [r["round"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(rounds, compute, label="compute")
        ax.bar(rounds, network, bottom=compute, label="network")
        ax.set(xlabel="round", ylabel="simulated s (mean client)", title="time breakdown")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        out.append(_save(fig, folder / "time_breakdown.png"))
    return out


def _accuracy_panel(ax: Any, rows: list[dict[str, Any]], xs: list[float], scale: float) -> None:
    """The server's test figure and the clients' weighted mean with its p10-p90 band."""
    server = [(x, scale * r["test_accuracy"]) for x, r in zip(xs, rows, strict=True)
              if r["test_accuracy"] is not None]
    if server:
        ax.plot(*zip(*server, strict=True), marker="o", label="server test set")
    fed = [(x, r) for x, r in zip(xs, rows, strict=True) if r["fed_metric"] is not None]
    if fed:
        x = [p[0] for p in fed]
        ax.plot(x, [scale * p[1]["fed_metric"] for p in fed], marker="s",
                label="clients (weighted mean)")
        ax.fill_between(x, [scale * p[1]["fed_p10"] for p in fed],
                        [scale * p[1]["fed_p90"] for p in fed], alpha=0.25,
                        label="clients p10-p90")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_stored_report(run: Any, folder: str | Path, seconds: float) -> list[Path]:
    """`write_report` for a run read back from the store (a deployed run's report)."""
    from types import SimpleNamespace

    from aggregator.evaluation import FederatedEvaluation

    rounds = []
    for r in sorted(run.rounds, key=lambda r: r.number):
        clients = [
            SimpleNamespace(accepted=c.accepted, reason=c.reason, device_class=c.device_class,
                            metrics=c.metrics or {})
            for c in r.clients
        ]
        evaluation = FederatedEvaluation.from_json(r.evaluation) if r.evaluation else None
        rounds.append(SimpleNamespace(
            number=r.number, num_selected=r.num_selected, num_accepted=r.num_accepted,
            train_loss=r.train_loss, test_loss=r.test_loss, test_accuracy=r.test_accuracy,
            seconds=r.seconds, metrics=r.metrics or {}, clients=clients, evaluation=evaluation,
        ))
    result = SimpleNamespace(scenario=SimpleNamespace(name=run.name), runtime=run.runtime,
                             run_id=run.id, seconds=seconds, rounds=rounds)
    return write_report(result, folder)
