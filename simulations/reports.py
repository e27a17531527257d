"""Reports of a simulated run: a JSON and a CSV metrics file, and PNG plots, side by side.

``write_report(result, folder)`` writes ``metrics.json`` (per round and per device class),
``rounds.csv`` and, when matplotlib is installed (the ``plot`` extra), ``accuracy.png``
(vs round and vs simulated time), ``device_classes.png`` (participation, dropouts and
rejections by device class) and ``time_breakdown.png`` (compute vs network per round).
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
)  # fmt: skip


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


def round_rows(rounds: list[Any]) -> list[dict[str, float]]:
    """One flat row per round (``ROUND_FIELDS``)."""
    rows = []
    for r in rounds:
        row = {
            "round": r.number,
            "selected": r.num_selected,
            "accepted": r.num_accepted,
            "train_loss": r.train_loss,
            "test_loss": r.test_loss,
            "test_accuracy": r.test_accuracy,
            "seconds": r.seconds,
        }
        row.update({k: r.metrics.get(k, 0.0) for k in ROUND_FIELDS if k not in row})
        rows.append(row)
    return rows


def device_summary(rounds: list[Any]) -> dict[str, dict[str, float]]:
    """Per device class over the run: selections by outcome, energy, simulated seconds."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rounds:
        for c in r.clients:
            row = table[c.device_class or "unknown"]
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
        "backend": result.backend,
        "run_id": result.run_id,
        "wall_seconds": result.seconds,
        "rounds": rows,
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
    return paths + plot(rows, devices, folder)


def plot(rows: list[dict[str, float]], devices: dict[str, dict[str, float]], folder: Path):
    """The three PNG figures; returns their paths."""
    import matplotlib.pyplot as plt

    out = []
    rounds = [r["round"] for r in rows]
    acc = [100 * r["test_accuracy"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(rounds, acc, marker="o")
    a.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy vs round")
    b.plot([r["sim_clock_s"] / 60 for r in rows], acc, marker="o")
    b.set(xlabel="simulated time (min)", ylabel="test accuracy (%)", title="vs simulated time")
    out.append(_save(fig, folder / "accuracy.png"))

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

    fig, ax = plt.subplots(figsize=(6, 4))
    compute = [r["compute_s_mean"] for r in rows]
    network = [r["network_s_mean"] for r in rows]
    ax.bar(rounds, compute, label="compute")
    ax.bar(rounds, network, bottom=compute, label="network")
    ax.set(xlabel="round", ylabel="simulated s (mean client)", title="time breakdown")
    ax.legend()
    out.append(_save(fig, folder / "time_breakdown.png"))
    return out


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
