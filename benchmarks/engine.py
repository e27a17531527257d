"""Engine benchmark: fedcore (eager and hybridized) against PyTorch, side by side.

    python -m benchmarks.engine [--threads 1] [--reps 200] [--deep-reps 11]

(a) MLP 784-512-256-10, batch 128, SGD momentum 0.9: step time of fedcore eager, fedcore
    hybridized and PyTorch in ONE process, repetitions interleaved (the order rotates each
    rep), medians and ratios; then peak RSS of each in its own subprocess (ru_maxrss), with
    the RSS right after the imports (the baseline) reported next to it.
(b) Deep MLP, 64 hidden layers of 256, batch 2048, hybridized: with a 96 MiB budget against no
    budget, interleaved: same losses, step-time ratio, the pool's peak during replay; then the
    budgeted run alone in a fresh process for its peak RSS, next to budget + baseline + 16 MiB
    and the analytic lower bound (parameters + gradients + optimizer state + the activations
    the plan keeps).

Every framework gets the same thread count (FEDCORE/OPENBLAS/OMP/MKL_NUM_THREADS and
torch.set_num_threads). torch is imported only inside the PyTorch workers. With more than one
thread, each timed MLP step follows a pause (GAP_S) and one untimed step of the same
framework: idle OpenMP and BLAS threads spin for a while after a call, and would otherwise
steal a core from the next framework's step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

MIB = 1 << 20
DEEP_BUDGET = 96 * MIB
RSS_SLACK = 16 * MIB
GAP_S = 0.1


def maxrss() -> int:
    """Peak resident set size of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- models ------------------------------------------------------------------------------------
def fed_mlp(hidden: tuple[int, ...], inp: int, seed: int = 0) -> Any:
    from fedcore.models import mlp

    return mlp(inp, 10, hidden=hidden, seed=seed)


def torch_mlp(fmodel: Any) -> Any:
    """The same network in PyTorch, with fedcore's initial weights."""
    import torch

    layers: list = []
    dense = [m for m in fmodel if hasattr(m, "weight")]
    for i, d in enumerate(dense):
        lin = torch.nn.Linear(d.in_features, d.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(d.weight.data.T.copy()))
            lin.bias.copy_(torch.from_numpy(d.bias.data.copy()))
        layers.append(lin)
        if i < len(dense) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def batches(n: int, batch: int, inp: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, inp), dtype=np.float32),
             rng.integers(0, 10, batch)) for _ in range(n)]


def fed_eager_step(model: Any, opt: Any) -> Any:
    """fedcore's eager training step, the one a device runs (`fedcore.nn.shards.train_step`:
    with several threads, the batch may be cut into shards that train side by side)."""
    from fedcore.engine import softmax_cross_entropy
    from fedcore.nn.shards import train_step

    def step(x: Any, y: Any) -> float:
        return train_step(model, softmax_cross_entropy, x, y, opt)

    return step


def torch_step(model: Any, opt: Any) -> Any:
    import torch

    def step(x: Any, y: Any) -> float:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _timed(f: Any, *args: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    w, c = time.perf_counter(), time.process_time()
    f(*args)
    return time.perf_counter() - w, time.process_time() - c


def _medians(times: dict[str, list[tuple[float, float]]]) -> dict:
    return {"median_s": {k: statistics.median(t[0] for t in v) for k, v in times.items()},
            "median_cpu_s": {k: statistics.median(t[1] for t in v) for k, v in times.items()}}


# -- workers (each runs in its own subprocess) -----------------------------------------------
def w_mlp_time(reps: int, threads: int) -> dict:
    import numpy as np
    import torch

    from fedcore.engine import get_engine
    from fedcore.optim import SGD

    data = batches(8, 128, 784)
    tdata = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    m_e, m_h = fed_mlp((512, 256), 784), fed_mlp((512, 256), 784)
    eager = fed_eager_step(m_e, SGD(m_e.parameters(), lr=0.01, momentum=0.9))
    hyb = m_h.hybridize(optimizer=SGD(m_h.parameters(), lr=0.01, momentum=0.9))
    tm = torch_mlp(m_e)
    tstep = torch_step(tm, torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9))
    runs = {"fedcore eager": (eager, data), "fedcore hybrid": (hyb, data),
            "pytorch": (tstep, tdata)}
    losses = {k: [f(*d[i]) for i in range(4)] for k, (f, d) in runs.items()}  # same 4 steps
    eng = get_engine()
    ops0 = eng.num_ops
    eager(*data[0])
    eager_ops = eng.num_ops - ops0
    for _ in range(10):
        for f, d in runs.values():
            f(*d[0])
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(reps):
        for k in names[r % 3:] + names[:r % 3]:
            f, d = runs[k]
            x, y = d[r % len(d)]
            if threads > 1:  # let the other frameworks' spinning threads sleep (see GAP_S)
                time.sleep(GAP_S)
                f(x, y)
            times[k].append(_timed(f, x, y))
    return {**_medians(times), "losses_first4": losses, "eager_ops_per_step": eager_ops,
            "hybrid_instrs_per_step": len(hyb.plan.program.instrs),
            "loss_max_diff_fedcore_vs_torch": float(np.max(np.abs(
                np.array(losses["fedcore hybrid"]) - np.array(losses["pytorch"]))))}


def w_mlp_rss(kind: str, steps: int) -> dict:
    if kind == "pytorch":
        import torch
    else:
        import numpy  # noqa: F401

        import fedcore.engine  # noqa: F401
        import fedcore.models  # noqa: F401
        import fedcore.optim  # noqa: F401
    baseline = maxrss()
    data = batches(4, 128, 784)
    if kind == "pytorch":
        tm = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                 torch.nn.Linear(512, 256), torch.nn.ReLU(),
                                 torch.nn.Linear(256, 10))
        step = torch_step(tm, torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9))
        data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    else:
        from fedcore.optim import SGD

        fm = fed_mlp((512, 256), 784)
        opt = SGD(fm.parameters(), lr=0.01, momentum=0.9)
        step = fm.hybridize(optimizer=opt) if kind == "fedcore hybrid" else \
            fed_eager_step(fm, opt)
    pool_peak = None
    for i in range(steps):
        if i == 1 and kind != "pytorch":  # after the first step (the trace, for hybrid)
            from fedcore.engine import get_engine

            get_engine().pool.reset_peak()
        step(*data[i % len(data)])
    if kind != "pytorch":
        pool_peak = get_engine().pool.peak_bytes
    return {"peak_rss": maxrss(), "import_baseline_rss": baseline, "pool_peak": pool_peak}


def _deep(budget: int | None, seed: int = 0) -> tuple[Any, Any, Any]:
    """A deep-MLP hybridized step on its own engine (its own pool, so peaks are its own)."""
    from fedcore.engine import NaiveEngine, use_engine
    from fedcore.optim import SGD

    eng = NaiveEngine()
    with use_engine(eng):
        model = fed_mlp((256,) * 64, 256, seed)
        step = model.hybridize(budget, optimizer=SGD(model.parameters(), lr=0.01, momentum=0.9))
    return eng, model, step


def _plan_info(eng: Any, model: Any, step: Any) -> dict:
    plan = step.plan
    n = model.num_parameters() * 4
    lay = plan.layout
    return {"plan_peak": plan.peak_bytes, "arena": lay.arena_bytes,
            "persistent": plan.persistent_bytes, "policy": list(plan.policy),
            "dropped_activations": len(plan.program.dropped),
            "recompute_gflop": plan.recompute_flops / 1e9,
            "lower_bound": 3 * n + lay.boundary_live, "params": n, "grads": n, "momentum": n,
            "kept_activations": lay.boundary_live, "pool_peak": eng.pool.peak_bytes}


def w_deep_time(reps: int, steps: int) -> dict:
    from fedcore.engine import use_engine

    data = batches(2, 2048, 256, seed=1)
    runs = {"no budget": _deep(None), "96 MiB budget": _deep(DEEP_BUDGET)}
    losses: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(steps):  # the same batches from the same initial weights
        for k, (eng, _, step) in runs.items():
            with use_engine(eng):
                if i == 1:
                    eng.pool.reset_peak()
                losses[k].append(step(*data[i % 2]))
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(reps):
        for k in names[r % 2:] + names[:r % 2]:
            eng, _, step = runs[k]
            with use_engine(eng):
                times[k].append(_timed(step, *data[r % 2]))
    info = {k: _plan_info(*v) for k, v in runs.items()}
    return {**_medians(times), "losses": losses, "plans": info}


def w_deep_rss(steps: int) -> dict:
    import numpy  # noqa: F401

    import fedcore.engine  # noqa: F401
    import fedcore.models  # noqa: F401
    import fedcore.optim  # noqa: F401

    baseline = maxrss()
    from fedcore.engine import use_engine

    data = batches(2, 2048, 256, seed=1)
    eng, model, step = _deep(DEEP_BUDGET)
    losses = []
    with use_engine(eng):
        for i in range(steps):
            if i == 1:
                eng.pool.reset_peak()
            losses.append(step(*data[i % 2]))
    return {"peak_rss": maxrss(), "import_baseline_rss": baseline, "losses": losses,
            **_plan_info(eng, model, step)}


# -- the driver --------------------------------------------------------------------------------
def run_worker(args: list[str], threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "FEDCORE_NUM_THREADS"):
        env[k] = str(threads)
    env["FEDCORE_BENCH_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--worker", *args],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1,
                   help="threads for every framework (fedcore's intra-op threads, BLAS, OpenMP)")
    p.add_argument("--reps", type=int, default=200, help="interleaved reps for the MLP")
    p.add_argument("--deep-reps", type=int, default=11, help="interleaved reps for the deep MLP")
    p.add_argument("--rss-steps", type=int, default=50)
    p.add_argument("--skip-deep", action="store_true")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return _worker(a.worker)
    t = a.threads
    print(f"fedcore engine benchmark: {t} thread(s) for every framework (fedcore's own, BLAS, "
          f"OpenMP); "
          f"{os.cpu_count()} cores; load average before: {os.getloadavg()}")
    r = run_worker(["mlp_time", str(a.reps)], t)
    med, cpu = r["median_s"], r["median_cpu_s"]
    tt, tc = med["pytorch"], cpu["pytorch"]
    print(f"\n(a) MLP 784-512-256-10, batch 128, SGD momentum 0.9 — {a.reps} interleaved reps, "
          f"medians of wall time (and of process CPU time, which other load does not inflate)")
    for k, v in med.items():
        print(f"  {k:15s} {v * 1e3:7.3f} ms/step   ratio to PyTorch {v / tt:5.2f}   "
              f"(CPU {cpu[k] * 1e3:7.3f} ms, ratio {cpu[k] / tc:5.2f})")
    print(f"  eager engine ops per step: {r['eager_ops_per_step']}; hybridized instructions "
          f"per step: {r['hybrid_instrs_per_step']}; max |loss diff| fedcore vs torch over "
          f"4 steps: {r['loss_max_diff_fedcore_vs_torch']:.2e}")
    rss = {k: run_worker(["mlp_rss", k, str(a.rss_steps)], t)
           for k in ("fedcore eager", "fedcore hybrid", "pytorch")}
    for k, v in rss.items():
        pool = "" if v["pool_peak"] is None else f"; engine pool peak per step " \
            f"{mib(v['pool_peak'])}"
        print(f"  peak RSS {k:15s} {mib(v['peak_rss']):>10s} (import baseline "
              f"{mib(v['import_baseline_rss'])})   ratio to PyTorch "
              f"{v['peak_rss'] / rss['pytorch']['peak_rss']:.3f}{pool}")
    if not a.skip_deep:
        _deep_report(a, t)
    print(f"\nload average after: {os.getloadavg()}")


def _deep_report(a: argparse.Namespace, t: int) -> None:
    r = run_worker(["deep_time", str(a.deep_reps), "3"], t)
    med, cpu = r["median_s"], r["median_cpu_s"]
    nb, b = med["no budget"], med["96 MiB budget"]
    nbc, bc = cpu["no budget"], cpu["96 MiB budget"]
    pb = r["plans"]["96 MiB budget"]
    print(f"\n(b) deep MLP, 64 hidden layers of 256, batch 2048, hybridized — {a.deep_reps} "
          f"interleaved reps, medians")
    full = r["plans"]["no budget"]
    print(f"  no budget      {nb:7.3f} s/step (CPU {nbc:.3f} s)   plan peak "
          f"{mib(full['plan_peak'])}")
    print(f"  96 MiB budget  {b:7.3f} s/step (CPU {bc:.3f} s)   ratio {b / nb:.3f} "
          f"(CPU {bc / nbc:.3f}; target <= 1.35)")
    print(f"  budgeted plan: policy (k, tail) {pb['policy']}, {pb['dropped_activations']} "
          f"activations dropped, {pb['recompute_gflop']:.1f} GFLOP recomputed per step")
    same = r["losses"]["no budget"] == r["losses"]["96 MiB budget"]
    print(f"  losses, no budget: {r['losses']['no budget']}\n  losses, budgeted:  "
          f"{r['losses']['96 MiB budget']}   identical: {same}")
    print(f"  pool peak during replay {mib(pb['pool_peak'])} <= budget {mib(DEEP_BUDGET)}: "
          f"{pb['pool_peak'] <= DEEP_BUDGET}")
    s = run_worker(["deep_rss", "3"], t)
    limit = DEEP_BUDGET + s["import_baseline_rss"] + RSS_SLACK
    print(f"  budgeted run alone: peak RSS {mib(s['peak_rss'])}, import baseline "
          f"{mib(s['import_baseline_rss'])}; limit budget + baseline + 16 MiB = {mib(limit)}: "
          f"{s['peak_rss'] <= limit}; losses match: {s['losses'] == r['losses']['no budget']}")
    print(f"  analytic lower bound {mib(s['lower_bound'])} = params {mib(s['params'])} + grads "
          f"{mib(s['grads'])} + momentum {mib(s['momentum'])} + kept activations "
          f"{mib(s['kept_activations'])};  plan peak {mib(s['plan_peak'])}, measured pool "
          f"peak {mib(s['pool_peak'])}")


def _worker(argv: list[str]) -> None:
    threads = int(os.environ.get("FEDCORE_BENCH_THREADS", "1"))
    name, rest = argv[0], argv[1:]
    if name in ("mlp_time",) or (name == "mlp_rss" and rest[0] == "pytorch"):
        import torch

        torch.set_num_threads(threads)
    if name == "mlp_time":
        out = w_mlp_time(int(rest[0]), threads)
    elif name == "mlp_rss":
        out = w_mlp_rss(rest[0], int(rest[1]))
    elif name == "deep_time":
        out = w_deep_time(int(rest[0]), int(rest[1]))
    else:
        out = w_deep_rss(int(rest[0]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
