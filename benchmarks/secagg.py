"""Secure aggregation cost: fedcore's SecAgg+ against Flower's SecAgg+ workflow, and at scale.

``python -m benchmarks.secagg [--rounds 5] [--inprocess-rounds 11] [--clients 20]
[--size 100000] [--skip-ray] [--scale-clients 1000] [--scale-size 1000000] [--skip-scale]``

1. *Added round time*, 20 clients x 100k parameters, the same toy training everywhere
   (global + noise, the way Flower's examples fit): each runtime runs plain rounds and secure
   rounds in one session, and "added" is median(secure round) - median(plain round), first
   round of each dropped as warm-up.
   - Flower's legacy ``DefaultWorkflow`` with and without ``SecAggPlusWorkflow`` (client mod
     ``secaggplus_mod``) on Flower's simulation runtime (Ray);
   - fedcore's ServerApp round loop with and without ``secagg`` on the same runtime;
   - fedcore's round loop on its in-process grid.
   Targets: fedcore/Ray added <= 1/4 of Flower's, fedcore/in-process added <= 1/15.
   Each Ray session runs in a subprocess of its own (Ray is shut down at its end).
2. *Scale*: 1,000 clients (k = 20, about 2 log2 n), 1M parameters, 10 % of the clients drop
   out after sharing keys, i.e. never send their masked input (the costly case: their
   pairwise masks must be rebuilt from shares). The round's own collector runs the stages
   against the clients' stage handlers in-process (``simulations.secagg_direct``): records
   are built, nothing is serialised or sent (a transport at this scale would dominate what is
   measured). Reports server time (target <= 60 s), per-client time and bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(QUIET)
NOISE = np.float32(0.01)


# --- fedcore: toy ClientApp and the round loop ------------------------------------------------


def fedcore_client_app() -> Any:
    """A ClientApp with fedcore's handlers around toy training (global + noise)."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from client_runtime.app import partition_id
    from client_runtime.secagg_app import TrainOutput, register_secagg
    from fedcore import protocol
    from fedcore.wire import read_vector, vector_record

    app = ClientApp()

    def examples(context) -> int:  # what a client declares and then trains on
        return 10 + partition_id(context) % 7

    def toy(msg, context) -> TrainOutput:
        start = time.perf_counter()
        config = msg.content.config_records[protocol.CONFIG]
        rng = np.random.default_rng(int(config["seed"]))
        base = read_vector(msg.content.array_records[protocol.GLOBAL])
        local = base + NOISE * rng.standard_normal(base.size, dtype=np.float32)
        return TrainOutput(local, examples(context), 1.0, time.perf_counter() - start)

    @app.query()
    def query(msg, context):
        info = ConfigRecord({"partition_id": partition_id(context),
                             "num_examples": examples(context)})
        return Message(RecordDict({protocol.CLIENT_INFO: info}), reply_to=msg)

    @app.train()
    def train(msg, context):
        out = toy(msg, context)
        metrics = MetricRecord(
            {"num_examples": out.num_examples, "train_loss": out.loss, "seconds": out.seconds}
        )
        update = vector_record(out.params)
        content = RecordDict({protocol.UPDATE: update, protocol.METRICS: metrics})
        return Message(content, reply_to=msg)

    register_secagg(app, toy)
    return app


def fedcore_rounds(grid, clients: int, size: int, rounds: int) -> dict:
    """Plain then secure rounds of fedcore's loop on ``grid``: seconds and bytes per round."""
    from aggregator.rounds import FederationConfig, run_federation
    from aggregator.secagg import SecAggConfig
    from aggregator.strategies import build_strategy
    from fedcore import protocol
    from fedcore.settings import TrainSettings

    train = protocol.TrainInstructions(0, protocol.ModelSpec("toy"), TrainSettings(batch_size=1), 0)
    out: dict = {}
    for label, secagg in (("plain", None), ("secagg", SecAggConfig(max_weight=16))):
        config = FederationConfig(rounds, clients, train, seed=1, secagg=secagg)
        outcomes: list = []
        run_federation(
            grid,
            config,
            np.zeros(size, np.float32),
            build_strategy("fedavg"),
            lambda p: (0.0, 0.0),
            outcomes.append,
        )
        out[label] = [o.seconds for o in outcomes]
        out[label + "_bytes_up"] = float(np.median([c.bytes_up for c in outcomes[-1].clients]))
    return out


def part_fedcore_inprocess(clients: int, size: int, rounds: int) -> dict:
    """fedcore's loop on its in-process grid."""
    from simulations.runtimes.inprocess import InProcessGrid

    return fedcore_rounds(InProcessGrid(fedcore_client_app(), clients), clients, size, rounds)


def part_fedcore_ray(clients: int, size: int, rounds: int) -> dict:
    """fedcore's ServerApp on Flower's simulation runtime."""
    from flwr.serverapp import ServerApp

    from simulations.runtimes.flower import run_on_flower

    result: dict = {}
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        try:
            result.update(fedcore_rounds(grid, clients, size, rounds))
        except BaseException as exc:  # reported by the parent process
            result["error"] = f"{type(exc).__name__}: {exc}"

    run_on_flower(app, fedcore_client_app(), clients)
    return result


# --- Flower: legacy DefaultWorkflow with and without SecAggPlusWorkflow ----------------------


def part_flower_ray(clients: int, size: int, rounds: int) -> dict:
    """Flower's own SecAgg+ (legacy API) vs its default fit workflow, one Ray session."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow

    from simulations.runtimes.flower import run_on_flower

    class Toy(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            rng = np.random.default_rng(self.pid)
            local = parameters[0] + NOISE * rng.standard_normal(size, dtype=np.float32)
            return [local], 10 + self.pid % 7, {}

    def client_fn(context):
        return Toy(int(context.node_config["partition-id"])).to_client()

    def secagg_or_plain(msg, context, call_next):
        """Flower's mod for SecAgg+ messages; plain fit messages go straight through."""
        if RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, context, call_next)
        return call_next(msg, context)

    client_app = ClientApp(client_fn=client_fn, mods=[secagg_or_plain])
    result: dict = {}

    def timed(label: str, workflow):
        result[label] = []

        def run(grid, context) -> None:
            start = time.perf_counter()
            workflow(grid, context)
            result[label].append(time.perf_counter() - start)

        return run

    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        secure = SecAggPlusWorkflow(num_shares=clients, reconstruction_threshold=clients - 3)
        try:
            for label, fit in (("plain", default_fit_workflow), ("secagg", secure)):
                strategy = FedAvg(
                    fraction_fit=1.0,
                    fraction_evaluate=0.0,
                    min_fit_clients=clients,
                    min_available_clients=clients,
                    initial_parameters=ndarrays_to_parameters([np.zeros(size, np.float32)]),
                )
                legacy = LegacyContext(context, ServerConfig(num_rounds=rounds), strategy)
                DefaultWorkflow(fit_workflow=timed(label, fit))(grid, legacy)
        except BaseException as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    run_on_flower(server_app, client_app, clients)
    return result


# --- scale: the collector over an in-process grid --------------------------------------------


def part_scale(clients: int, size: int, dropout: float, seed: int = 0) -> dict:
    """One round among ``clients`` x ``size``; ``dropout`` of them never send masked input."""
    from aggregator.secagg import SecAggConfig
    from simulations.secagg_direct import run_direct

    k = min(2 * math.ceil(math.log2(clients)), clients - 1)  # ~ 2 log2 n, even
    settings = SecAggConfig(k=k, max_weight=16)
    params, encoding = settings.params_for(clients), settings.encoding_for(clients)
    rng = np.random.default_rng(seed)
    base = NOISE * rng.standard_normal(size, dtype=np.float32)
    dropped = set(rng.choice(clients, size=round(dropout * clients), replace=False).tolist())
    expected = np.zeros(size, np.float64)
    weight = [0]

    def update_of(i: int):
        x = np.roll(base, i)
        examples = 10 + i % 7
        w_q = encoding.weight_units(examples)
        np.add(expected, np.asarray(x, np.float64) * w_q, out=expected)
        weight[0] += w_q
        return x, examples, 1.0

    outcome = run_direct(clients, size, update_of, settings, {"masked": dropped})
    if outcome.result is None:
        raise RuntimeError(f"the scale round was abandoned: {outcome.error}")
    error = float(np.abs(outcome.result.mean_update - expected / weight[0]).max())
    bound = encoding.error_bound(clients - len(dropped), weight[0])
    senders = np.flatnonzero(outcome.client_bytes)
    return {
        "n": clients,
        "k": params.k,
        "t": params.t,
        "security_log2": params.security_log2,
        "correctness_log2": params.correctness_log2,
        "dropped": len(dropped),
        "server_seconds": outcome.server_seconds,
        "stage_seconds": outcome.stage_seconds,
        "client_seconds_median": float(np.median(outcome.client_seconds[senders])),
        "client_seconds_max": float(outcome.client_seconds[senders].max()),
        "client_bytes_median": float(np.median(outcome.client_bytes[senders])),
        "expansion": float(np.median(outcome.client_bytes[senders])) / (4 * size),
        "max_error": error,
        "error_bound": bound,
    }


# --- orchestration -----------------------------------------------------------------------------

PARTS = {"flower-ray": part_flower_ray, "fedcore-ray": part_fedcore_ray}


def run_part_in_subprocess(part: str, args: argparse.Namespace) -> dict:
    """Run a Ray part in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, "-m", "benchmarks.secagg", "--part", part]
    command += ["--clients", str(args.clients), "--size", str(args.size)]
    command += ["--rounds", str(args.rounds)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **QUIET})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


def added(result: dict) -> tuple[float, float, float]:
    """(median plain round, median secure round, added), first round of each dropped."""
    plain = float(np.median(result["plain"][1:] or result["plain"]))
    secure = float(np.median(result["secagg"][1:] or result["secagg"]))
    return plain, secure, secure - plain


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind on Ray")
    parser.add_argument("--inprocess-rounds", type=int, default=11)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--scale-clients", type=int, default=1000)
    parser.add_argument("--scale-size", type=int, default=1_000_000)
    parser.add_argument("--scale-dropout", type=float, default=0.1)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:  # child process: one Ray session, JSON on the last line
        result = PARTS[args.part](args.clients, args.size, args.rounds)
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:  # pragma: no cover
            pass
        print(json.dumps(result))
        return

    print(f"secure aggregation, {args.clients} clients x {args.size:,} parameters, "
          f"{args.rounds} rounds of each kind on Ray, {args.inprocess_rounds} in-process "
          "(first dropped), medians")
    inprocess = part_fedcore_inprocess(args.clients, args.size, args.inprocess_rounds)
    results = {"fedcore in-process": inprocess}
    if not args.skip_ray:
        results["flower SecAgg+ (Ray)"] = run_part_in_subprocess("flower-ray", args)
        results["fedcore SecAgg+ (Ray)"] = run_part_in_subprocess("fedcore-ray", args)
    rows = {}
    print(f"{'runtime':<24}{'plain s':>10}{'secure s':>10}{'added s':>10}{'upload x':>10}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:<24}  failed: {result['error']}")
            continue
        plain, secure, extra = rows[name] = added(result)
        expansion = ""
        if "secagg_bytes_up" in result:
            expansion = f"{result['secagg_bytes_up'] / (4 * args.size):.4f}"
        print(f"{name:<24}{plain:>10.3f}{secure:>10.3f}{extra:>10.3f}{expansion:>10}")
    flower = rows.get("flower SecAgg+ (Ray)")
    if flower:
        for name, target in (("fedcore SecAgg+ (Ray)", 1 / 4), ("fedcore in-process", 1 / 15)):
            if name in rows:
                ratio = rows[name][2] / flower[2]
                verdict = "ok" if ratio <= target else "MISSED"
                print(f"added time, {name} / Flower's: {ratio:.3f} (target <= {target:.3f}) "
                      f"{verdict}")
    if not args.skip_scale:
        s = part_scale(args.scale_clients, args.scale_size, args.scale_dropout)
        print(f"\nscale: n = {s['n']}, k = {s['k']}, t = {s['t']} (privacy bound "
              f"2^{s['security_log2']:.1f}, abort bound 2^{s['correctness_log2']:.1f}), "
              f"{args.scale_size:,} parameters, {s['dropped']} dropped before masked input")
        stages = ", ".join(f"{k} {v:.2f}" for k, v in s["stage_seconds"].items())
        verdict = "ok" if s["server_seconds"] <= 60 else "MISSED"
        print(f"server time {s['server_seconds']:.2f} s (target <= 60 s) {verdict}; "
              f"wall per stage: {stages}")
        print(f"per client: median {s['client_seconds_median']:.3f} s (max "
              f"{s['client_seconds_max']:.3f} s), {s['client_bytes_median']:,.0f} bytes sent "
              f"= {s['expansion']:.4f} x the float32 update")
        print(f"decoded mean: max error {s['max_error']:.2e} (bound {s['error_bound']:.2e})")


if __name__ == "__main__":
    main()
