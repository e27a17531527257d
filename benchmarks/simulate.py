"""Simulation cost: fedcore's in-process runtime vs plain Flower simulation (Ray), side by side.

``python -m benchmarks.simulate [--repeat 3] [--clients 100] [--rounds 10] [--pop-rounds 3]``

The same scenario (handwritten digits split IID among ``--clients`` clients, all of them
selected every round, softmax regression, one local epoch of SGD) runs
- on fedcore's in-process runtime (``simulations.lifecycle.run_scenario``), and
- on Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray, one CPU per client)
  with a plain-numpy ClientApp (Message API) and a ServerApp driving Flower's own ``FedAvg``.

Each run is its own subprocess. The parent measures its wall time (interpreter start to exit,
so Ray's start-up counts) and the peak memory of the whole process tree: every ~50 ms it sums
the RSS of the child and all its descendants (Ray's GCS, raylet and workers), keeping track of
processes that were re-parented, and lists any still alive after the child exits. Ray's
``/tmp/ray/session_*`` folders created by the run are deleted. Then it times rounds of
``simulations/population_100k.toml`` (1,000 clients a round out of 100,000).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
SEED = 0
LEARNING_RATE = 0.1
BATCH_SIZE = 16
LOCAL_EPOCHS = 1
POPULATION_TOML = Path(__file__).resolve().parent.parent / "simulations" / "population_100k.toml"
RESULT = "RESULT "


def scenario_dict(clients: int, rounds: int) -> dict[str, Any]:
    """The benchmark scenario for fedcore (the Flower app below mirrors it)."""
    return {
        "name": "bench_simulate",
        "seed": SEED,
        "data": {"dataset": "digits", "partition": "iid", "test_fraction": 0.2},
        "model": {"name": "logreg"},
        "federation": {
            "num_clients": clients,
            "clients_per_round": clients,
            "rounds": rounds,
            "strategy": "fedavg",
        },
        "train": {
            "local_epochs": LOCAL_EPOCHS,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
        },
    }


# --- the workers (each runs in its own subprocess) ---------------------------------------------


def run_fedcore(clients: int, rounds: int) -> dict[str, Any]:
    """The scenario on fedcore's in-process runtime."""
    from simulations.lifecycle import run_scenario
    from simulations.scenario import scenario_from_dict

    start = time.perf_counter()
    result = run_scenario(scenario_from_dict(scenario_dict(clients, rounds)))
    return {"run_s": time.perf_counter() - start, "accuracy": result.final_accuracy}


def _digits(clients: int) -> tuple[Any, list[np.ndarray]]:
    """The same dataset split and IID partitions fedcore uses."""
    from simulations.datasets import load_dataset
    from simulations.partition import iid_partition

    data = load_dataset("digits", test_fraction=0.2, seed=SEED)
    return data, iid_partition(data.y_train, clients, seed=SEED)


def _softmax_grad(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return x.T @ p, p.sum(axis=0), loss


def initial_weights(features: int, classes: int) -> list[np.ndarray]:
    """The same starting point as fedcore's ``logreg`` (Glorot-uniform weight, zero bias)."""
    from fedcore.models import logreg

    params = dict(logreg(features, classes, seed=SEED).named_parameters())
    return [np.array(p.data if hasattr(p, "data") else p, np.float32) for p in params.values()]


def flower_apps(clients: int, rounds: int, out: dict[str, Any]) -> tuple[Any, Any]:
    """A plain-numpy ClientApp and a ServerApp running Flower's ``FedAvg``."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        data, parts = _digits(clients)
        idx = parts[int(context.node_config["partition-id"])]
        x = data.x_train[idx].reshape(len(idx), -1).astype(np.float32)
        y = data.y_train[idx]
        w, b = (a.copy() for a in msg.content["arrays"].to_numpy_ndarrays())
        rng = np.random.default_rng(SEED + int(context.node_config["partition-id"]))
        loss = 0.0
        for _ in range(LOCAL_EPOCHS):
            order = rng.permutation(len(y))
            for lo in range(0, len(y), BATCH_SIZE):
                batch = order[lo : lo + BATCH_SIZE]
                gw, gb, loss = _softmax_grad(w, b, x[batch], y[batch])
                w -= np.float32(LEARNING_RATE) * gw.astype(np.float32)
                b -= np.float32(LEARNING_RATE) * gb.astype(np.float32)
        content = RecordDict(
            {
                "arrays": ArrayRecord([w, b]),
                "metrics": MetricRecord({"num-examples": len(y), "train_loss": loss}),
            }
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        data, _ = _digits(clients)
        x_test = data.x_test.reshape(len(data.y_test), -1).astype(np.float32)
        features, classes = x_test.shape[1], int(data.num_classes)

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            w, b = arrays.to_numpy_ndarrays()
            accuracy = float(((x_test @ w + b).argmax(axis=1) == data.y_test).mean())
            out["accuracy"] = accuracy
            return MetricRecord({"accuracy": accuracy})

        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_evaluate_nodes=0,
            min_available_nodes=clients,
        )
        initial = ArrayRecord(initial_weights(features, classes))
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=central)

    return server_app, client_app


def run_flower(clients: int, rounds: int) -> dict[str, Any]:
    """The scenario on Flower's simulation runtime with Ray, then Ray shut down."""
    import logging

    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    out: dict[str, Any] = {}
    server_app, client_app = flower_apps(clients, rounds, out)
    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "logging_level": logging.ERROR},
        },
    )
    out["run_s"] = time.perf_counter() - start
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return out


def run_population(rounds: int) -> dict[str, Any]:
    """A few rounds of the 100k-population scenario: seconds per round."""
    from simulations.lifecycle import run_scenario
    from simulations.scenario import load_scenario

    scenario = load_scenario(POPULATION_TOML)
    scenario = scenario.model_copy(
        update={"federation": scenario.federation.model_copy(update={"rounds": rounds})}
    )
    stamps: list[float] = []
    start = time.perf_counter()
    result = run_scenario(scenario, on_round=lambda _: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    per_round = np.diff([start, *stamps]).tolist()
    return {
        "run_s": total,
        "round_s": per_round,
        "clients_per_round": scenario.federation.clients_per_round,
        "accuracy": [r.test_accuracy for r in result.rounds],
    }


# --- the parent: process-tree memory and wall time -----------------------------------------------


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[19]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeWatch:
    """Processes descended from a root (including re-parented ones) and their summed RSS."""

    def __init__(self, root: int) -> None:
        self.seen: dict[int, str] = {}  # pid -> start time (guards against pid reuse)
        self.root = root
        self.peak = 0

    def poll(self) -> int:
        """Update the tree, return its current RSS sum."""
        parents: dict[int, tuple[int, str]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None:
                    parents[int(entry.name)] = stat
        alive = {pid for pid, start in self.seen.items() if parents.get(pid, (0, ""))[1] == start}
        if self.root in parents:
            alive.add(self.root)
            self.seen.setdefault(self.root, parents[self.root][1])
        grew = True
        while grew:
            grew = False
            for pid, (ppid, start) in parents.items():
                if pid not in alive and ppid in alive:
                    alive.add(pid)
                    self.seen[pid] = start
                    grew = True
        total = sum(_rss(pid) for pid in alive)
        self.peak = max(self.peak, total)
        return total

    def survivors(self) -> list[int]:
        """Processes of the tree still alive (other than the root)."""
        return [
            pid
            for pid, start in self.seen.items()
            if pid != self.root and (_stat(pid) or (0, ""))[1] == start
        ]


def _ray_sessions() -> set[Path]:
    return set(Path("/tmp/ray").glob("session_*")) if Path("/tmp/ray").is_dir() else set()


def measure(args: list[str]) -> dict[str, Any]:
    """Run ``python -m benchmarks.simulate --worker ...`` and watch its process tree."""
    before = _ray_sessions()
    env = {**os.environ, **ENV}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.simulate", "--worker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    watch = TreeWatch(proc.pid)
    while proc.poll() is None:
        watch.poll()
        time.sleep(0.05)
    wall = time.perf_counter() - start
    output = proc.stdout.read() if proc.stdout else ""
    left = watch.survivors()
    for _ in range(100):  # give Ray's processes up to 10 s to exit after the driver
        if not left:
            break
        time.sleep(0.1)
        left = watch.survivors()
    ours = {str(pid) for pid in watch.seen}
    for session in _ray_sessions() - before:  # only this run's: named after its driver's pid
        if session.name.rsplit("_", 1)[-1] in ours:  # (other users' Ray may run meanwhile)
            shutil.rmtree(session, ignore_errors=True)
    lines = [line for line in output.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len(RESULT) :])
    result.update(wall_s=wall, peak_bytes=watch.peak, processes=len(watch.seen), left=left)
    return result


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run as a worker or as the comparing parent."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pop-rounds", type=int, default=3)
    parser.add_argument("--worker", choices=["fedcore", "flower", "population"])
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker == "fedcore":
            out = run_fedcore(args.clients, args.rounds)
        elif args.worker == "flower":
            out = run_flower(args.clients, args.rounds)
        else:
            out = run_population(args.pop_rounds)
        print(RESULT + json.dumps(out), flush=True)
        return

    print(
        f"{args.clients} clients, all selected, {args.rounds} rounds, softmax regression on digits "
        f"(IID), {os.cpu_count()} CPUs, {args.repeat} repetition(s), medians"
    )
    common = ["--clients", str(args.clients), "--rounds", str(args.rounds)]
    runs: dict[str, list[dict[str, Any]]] = {"fedcore": [], "flower": []}
    for _ in range(args.repeat):  # interleaved
        for name in runs:
            runs[name].append(measure([name, *common]))
    med: dict[str, dict[str, float]] = {}
    print(f"{'runtime':<22}{'wall s':>9}{'run s':>9}{'peak MiB':>10}{'procs':>7}{'accuracy':>10}")
    for name, label in (("fedcore", "fedcore in-process"), ("flower", "Flower + Ray")):
        rs = runs[name]
        med[name] = {
            key: statistics.median(r[key] for r in rs)
            for key in ("wall_s", "run_s", "peak_bytes", "processes", "accuracy")
        }
        m = med[name]
        print(
            f"{label:<22}{m['wall_s']:>9.2f}{m['run_s']:>9.2f}{m['peak_bytes'] / 2**20:>10.0f}"
            f"{m['processes']:>7.0f}{m['accuracy']:>10.3f}"
        )
        left = sorted({pid for r in rs for pid in r["left"]})
        if left:
            print(f"  left behind by {label}: {len(left)} process(es): {left}")
    speed = med["flower"]["wall_s"] / med["fedcore"]["wall_s"]
    speed_run = med["flower"]["run_s"] / med["fedcore"]["run_s"]
    memory = med["fedcore"]["peak_bytes"] / med["flower"]["peak_bytes"]
    print(
        f"wall time: fedcore {speed:.1f}x faster (target >= 20x: "
        f"{'met' if speed >= 20 else 'NOT met'}); inside the run only: {speed_run:.1f}x"
    )
    print(
        f"peak memory of the process tree: fedcore {memory:.3f} of Flower's (1/{1 / memory:.1f}; "
        f"target <= 1/5: {'met' if memory <= 0.2 else 'NOT met'})"
    )

    pop = measure(["population", "--pop-rounds", str(args.pop_rounds)])
    rounds_s = pop["round_s"]
    each = ", ".join(f"{s:.2f}" for s in rounds_s)
    print(
        f"population of 100,000, {pop['clients_per_round']} clients a round, "
        f"{len(rounds_s)} rounds (1 repetition): {60 / statistics.median(rounds_s):.1f} rounds/min "
        f"(median round {statistics.median(rounds_s):.2f} s; rounds {each} s; "
        f"{60 * len(rounds_s) / pop['wall_s']:.1f} rounds/min counting start-up), "
        f"peak {pop['peak_bytes'] / 2**20:.0f} MiB, accuracy by round "
        f"{', '.join(f'{a:.3f}' for a in pop['accuracy'])}"
    )


if __name__ == "__main__":
    main()
