"""Synchronous FedAvg against FedBuff (buffered asynchronous), side by side, in simulated time.

``python -m benchmarks.asynchrony [--seeds 7 8 9] [--population 10000] [--plot PNG]``

For each scenario and seed both variants run on the in-process backend with the scenario's
device mix, availability, dropouts, deadline and over-selection (the synchronous baseline is
the scenario as tuned). Reported, median over seeds:
- simulated seconds until the test accuracy first reaches the target,
- client updates trained until then (every selected client's training counts, rejected or not),
- wall-clock seconds per client update (the cost of simulating each variant),
and the ratios async / sync. Scenarios: ``simulations/phones_label_skew.toml`` (target 85 %)
and ``simulations/population_100k.toml`` cut to ``--population`` clients, 100 a round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from simulations.harness import simulate
from simulations.prepare import prepare_scenario
from simulations.scenario import load_scenario, scenario_from_dict


def _variant(base: dict[str, Any], seed: int, changes: dict[str, Any]) -> dict[str, Any]:
    data = {**base, "seed": seed, "federation": {**base["federation"], **changes}}
    return data


def _first_reach(rounds: list, target: float) -> tuple[float, int] | None:
    """(simulated seconds, client updates) when the accuracy first reaches ``target``."""
    updates = 0
    for outcome in rounds:
        updates += len(outcome.clients)
        if outcome.test_accuracy >= target:
            return float(outcome.metrics.get("sim_clock_s", 0.0)), updates
    return None


CURVES: dict[str, list[tuple[float, float]]] = {}  # "scenario/kind" -> (sim s, accuracy)


def run_one(data: dict[str, Any], target: float) -> dict[str, float]:
    """Run one variant; its time to target, updates and wall seconds per update."""
    start = time.perf_counter()
    result = simulate(prepare_scenario(scenario_from_dict(data)))
    wall = time.perf_counter() - start
    kind = data["federation"].get("mode", "sync")
    CURVES.setdefault(f"{data['name']}/{kind}", [
        (float(r.metrics.get("sim_clock_s", 0.0)), r.test_accuracy) for r in result.rounds
    ])
    total_updates = sum(len(r.clients) for r in result.rounds)
    reached = _first_reach(result.rounds, target)
    return {
        "sim_s": reached[0] if reached else float("nan"),
        "updates": reached[1] if reached else float("nan"),
        "wall_per_update_ms": 1000 * wall / max(total_updates, 1),
        "final": result.rounds[-1].test_accuracy,
    }


def compare(name: str, base: dict[str, Any], target: float, seeds: list[int],
            sync: dict[str, Any], asynchronous: dict[str, Any]) -> None:
    """Print the side-by-side table for one scenario."""
    rows: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    for seed in seeds:
        rows["sync"].append(run_one(_variant(base, seed, sync), target))
        rows["async"].append(run_one(_variant(base, seed, asynchronous), target))
    med = {
        kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for kind, runs in rows.items()
    }
    print(f"\n{name}: target {target:.0%}, seeds {seeds}")
    print(f"  async: {asynchronous}")
    print(f"  {'':6} {'sim s to target':>16} {'updates':>8} {'ms/update':>10} {'final acc':>10}")
    for kind in ("sync", "async"):
        m = med[kind]
        print(f"  {kind:6} {m['sim_s']:16.3f} {m['updates']:8.0f} "
              f"{m['wall_per_update_ms']:10.2f} {m['final']:10.3f}")
    for kind, runs in rows.items():
        print(f"  {kind} per seed sim s: {[round(r['sim_s'], 3) for r in runs]}")
    s, a = med["sync"], med["async"]
    print(f"  ratio async/sync: simulated time {a['sim_s'] / s['sim_s']:.2f}x, "
          f"updates {a['updates'] / s['updates']:.2f}x, "
          f"wall per update {a['wall_per_update_ms'] / s['wall_per_update_ms']:.2f}x")


def main() -> None:
    """Both scenarios, sync and async."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--population", type=int, default=10_000)
    parser.add_argument("--skip-population", action="store_true")
    parser.add_argument("--plot", type=Path, help="PNG: accuracy against simulated time "
                        "(first seed), sync and async side by side")
    args = parser.parse_args()
    try:
        _compare_all(args)
    finally:
        if args.plot is not None and CURVES:
            plot(args.plot)


def plot(path: Path) -> None:
    """Accuracy against simulated time, one panel per scenario (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({key.split("/")[0] for key in CURVES})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for kind, style in (("sync", "-o"), ("async", "-")):
            points = CURVES.get(f"{name}/{kind}", [])
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=3,
                        label="synchronous FedAvg" if kind == "sync" else "FedBuff (async)")
        ax.set(title=name, xlabel="simulated seconds", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def _compare_all(args: argparse.Namespace) -> None:

    phones = load_scenario("simulations/phones_label_skew.toml").model_dump()
    compare("phones_label_skew", phones, 0.85, args.seeds,
            sync={"rounds": 15},
            asynchronous={"rounds": 40, "mode": "async", "concurrency": 40, "buffer": 10,
                          "max_staleness": 10})
    if args.skip_population:
        return
    big = load_scenario("simulations/population_100k.toml").model_dump()
    big["population"] = {**big["population"], "size": args.population}
    big["federation"] = {**big["federation"], "num_clients": args.population,
                         "clients_per_round": 100}
    compare(f"population ({args.population} clients)", big, 0.5, args.seeds,
            sync={"rounds": 15},
            asynchronous={"rounds": 40, "mode": "async", "concurrency": 200, "buffer": 50,
                          "max_staleness": 10})


if __name__ == "__main__":
    main()
