"""Synchronous FedAvg against FedBuff (buffered asynchronous), side by side, in simulated time.

``python -m benchmarks.asynchrony [--seeds 7 8 9] [--population 10000] [--plot PNG]
[--skip-phones] [--skip-population] [--profile DIR]``

For each scenario and seed both variants run on the in-process runtime with the scenario's
device mix, availability, dropouts, deadline and over-selection (the synchronous baseline is
the scenario as tuned). Reported, median over seeds:
- simulated seconds until the test accuracy first reaches the target,
- client updates trained until then (every selected client's training counts, rejected or not),
- wall-clock seconds per client update trained (the cost of simulating each variant; an
  asynchronous run also trains the ``concurrency`` clients still in flight when it ends, whose
  updates are never recorded, so its trainings are counted from the run's dispatch counter),
  and per update recorded; and the process's CPU seconds per update trained (steadier than
  wall time on a busy machine),
and the ratios async / sync. Scenarios: ``simulations/phones_label_skew.toml`` (target 85 %)
and ``simulations/population_100k.toml`` cut to ``--population`` clients, 100 a round.

``--profile DIR`` runs each variant under cProfile (slower: compare its figures with each
other, not with a run without it), writes ``DIR/<scenario>-<mode>-<seed>.prof`` and prints, for
the first seed, the functions with the most own time in either mode, in ms per update trained.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
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
PROFILES: dict[str, tuple[pstats.Stats, int]] = {}  # "scenario/kind" -> (first seed, trained)


def run_one(data: dict[str, Any], target: float,
            profile: Path | None = None) -> dict[str, float]:
    """Run one variant; its time to target, updates and wall seconds per update."""
    prepared = prepare_scenario(scenario_from_dict(data))  # the same for both: not timed
    profiler = cProfile.Profile() if profile is not None else None
    start, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    result = simulate(prepared)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    kind = data["federation"].get("mode", "sync")
    CURVES.setdefault(f"{data['name']}/{kind}", [
        (float(r.metrics.get("sim_clock_s", 0.0)), r.test_accuracy) for r in result.rounds
    ])
    recorded = sum(len(r.clients) for r in result.rounds)
    trained = trained_updates(result.rounds)
    if profiler is not None and profile is not None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{data['name']}-{kind}-{data['seed']}")
        profiler.dump_stats(profile / f"{stem}.prof")
        PROFILES.setdefault(f"{data['name']}/{kind}", (pstats.Stats(profiler), trained))
    reached = _first_reach(result.rounds, target)
    return {
        "sim_s": reached[0] if reached else float("nan"),
        "updates": reached[1] if reached else float("nan"),
        "wall_per_update_ms": 1000 * wall / max(trained, 1),
        "wall_per_recorded_ms": 1000 * wall / max(recorded, 1),
        "cpu_per_update_ms": 1000 * cpu / max(trained, 1),
        "final": result.rounds[-1].test_accuracy,
    }


def trained_updates(rounds: list) -> int:
    """Client trainings a run performed: every recorded client of a synchronous round (each
    selected client trains, rejected or not); for an asynchronous run every dispatched
    training (its checkpoint's ``async.counters``), in flight at the end or not."""
    state = rounds[-1].server_state if rounds else {}
    if "async.counters" in state:
        return int(state["async.counters"][0])
    return sum(len(r.clients) for r in rounds)


def compare(name: str, base: dict[str, Any], target: float, seeds: list[int],
            sync: dict[str, Any], asynchronous: dict[str, Any],
            profile: Path | None = None) -> None:
    """Print the side-by-side table for one scenario."""
    rows: dict[str, list[dict[str, float]]] = {"sync": [], "async": []}
    for seed in seeds:
        rows["sync"].append(run_one(_variant(base, seed, sync), target, profile))
        rows["async"].append(run_one(_variant(base, seed, asynchronous), target, profile))
    med = {
        kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for kind, runs in rows.items()
    }
    print(f"\n{name}: target {target:.0%}, seeds {seeds}")
    print(f"  async: {asynchronous}")
    print(f"  {'':6} {'sim s to target':>16} {'updates':>8} {'ms/update':>10} "
          f"{'ms/recorded':>12} {'cpu ms/update':>14} {'final acc':>10}")
    for kind in ("sync", "async"):
        m = med[kind]
        print(f"  {kind:6} {m['sim_s']:16.3f} {m['updates']:8.0f} "
              f"{m['wall_per_update_ms']:10.2f} {m['wall_per_recorded_ms']:12.2f} "
              f"{m['cpu_per_update_ms']:14.2f} {m['final']:10.3f}")
    for kind, runs in rows.items():
        print(f"  {kind} per seed sim s: {[round(r['sim_s'], 3) for r in runs]}")
    s, a = med["sync"], med["async"]
    print(f"  ratio async/sync: simulated time {a['sim_s'] / s['sim_s']:.2f}x, "
          f"updates {a['updates'] / s['updates']:.2f}x, "
          f"wall per update trained {a['wall_per_update_ms'] / s['wall_per_update_ms']:.2f}x "
          f"(per update recorded "
          f"{a['wall_per_recorded_ms'] / s['wall_per_recorded_ms']:.2f}x; CPU per update "
          f"{a['cpu_per_update_ms'] / s['cpu_per_update_ms']:.2f}x)")
    if profile is not None:
        print_profiles(base["name"])


def print_profiles(name: str, top: int = 15) -> None:
    """Own time per update trained of the functions that cost most in either mode."""
    per_update: dict[str, dict[str, float]] = {}
    for kind in ("sync", "async"):
        stats, trained = PROFILES[f"{name}/{kind}"]
        for (path, line, func), row in stats.stats.items():  # type: ignore[attr-defined]
            where = f"{Path(path).name}:{line}({func})"
            per_update.setdefault(where, {})[kind] = 1000 * row[2] / max(trained, 1)
    ranked = sorted(per_update.items(), key=lambda kv: -max(kv[1].values()))[:top]
    print(f"  own time, ms per update trained (cProfile, seed of the first run): "
          f"{'sync':>8} {'async':>8}")
    for where, times in ranked:
        print(f"  {where[:64]:64} {times.get('sync', 0.0):8.3f} {times.get('async', 0.0):8.3f}")
    totals = {k: sum(t.get(k, 0.0) for t in per_update.values()) for k in ("sync", "async")}
    print(f"  {'all functions':64} {totals['sync']:8.3f} {totals['async']:8.3f}")


def main() -> None:
    """Both scenarios, sync and async."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--population", type=int, default=10_000)
    parser.add_argument("--skip-population", action="store_true")
    parser.add_argument("--skip-phones", action="store_true")
    parser.add_argument("--profile", type=Path, help="folder: cProfile each variant (see above)")
    parser.add_argument("--plot", type=Path, help="PNG: accuracy against simulated time "
                        "(first seed), sync and async side by side")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
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
    if not args.skip_phones:
        phones = load_scenario("simulations/phones_label_skew.toml").model_dump()
        compare("phones_label_skew", phones, 0.85, args.seeds,
                sync={"rounds": 15},
                asynchronous={"rounds": 40, "mode": "async", "concurrency": 40, "buffer": 10,
                              "max_staleness": 10}, profile=args.profile)
    if args.skip_population:
        return
    big = load_scenario("simulations/population_100k.toml").model_dump()
    big["population"] = {**big["population"], "size": args.population}
    big["federation"] = {**big["federation"], "num_clients": args.population,
                         "clients_per_round": 100}
    compare(f"population ({args.population} clients)", big, 0.5, args.seeds,
            sync={"rounds": 15},
            asynchronous={"rounds": 40, "mode": "async", "concurrency": 200, "buffer": 50,
                          "max_staleness": 10}, profile=args.profile)


if __name__ == "__main__":
    main()
