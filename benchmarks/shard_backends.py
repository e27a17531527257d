"""fedcore's training step on 1 thread, on 2 in thread shards and in process shards, and
PyTorch's on 1 and 2 threads, interleaved step by step in one process.

    python -m benchmarks.shard_backends [--case cnn|gpt] [--reps 40] [--gap 0.05]

Every repetition runs each mode once, in an order rotated from one repetition to the next:
a pause of `--gap` seconds, one untimed step (it wakes the mode's threads and processes),
then the timed step. Load that comes and goes hits every mode alike, which separate runs of
`benchmarks.engine_layers` cannot promise on a shared machine. Medians in milliseconds, with
the speed-ups over fedcore's one-thread time and the ratios to PyTorch's two-thread time.
The models, weights and batches are `benchmarks.engine_layers`'s (`CASES`); the process
shards are `fedcore.nn.shard_workers`, the thread shards `fedcore.nn.shards._Replica`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from benchmarks.engine import fed_eager_step
from benchmarks.engine_layers import CASES
from fedcore.engine.parallel import get_num_threads, set_num_threads
from fedcore.nn import shards
from fedcore.optim import SGD

#: fedcore's modes: (threads, shard backend)
FEDCORE_MODES = {"fedcore 1": (1, "thread"), "fedcore 2 threads": (2, "thread"),
                 "fedcore 2 processes": (2, "process")}


def modes(case: str) -> dict[str, Callable[[], None]]:
    """Each mode's step, by name (the fedcore ones share one model and optimizer)."""
    import torch

    ours, theirs, (x, y), (tx, ty), lr = CASES[case](torch)
    step = fed_eager_step(ours, SGD(ours.parameters(), lr=lr, momentum=0.9))
    topt = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=0.9)

    def fedcore(threads: int, backend: str) -> Callable[[], None]:
        def run() -> None:
            set_num_threads(threads)
            shards.BACKEND = backend
            step(x, y)

        return run

    def pytorch(threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            topt.zero_grad()
            torch.nn.functional.cross_entropy(theirs(tx), ty).backward()
            topt.step()

        return run

    out = {name: fedcore(*how) for name, how in FEDCORE_MODES.items()}
    out.update({"torch 1": pytorch(1), "torch 2": pytorch(2)})
    return out


def measure(case: str, reps: int, gap: float) -> dict[str, float]:
    """Median milliseconds of each mode's step (see the module doc)."""
    runs = modes(case)
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    saved = shards.BACKEND, get_num_threads()
    try:
        for name in names:  # warm: forks the worker, fills the pools
            runs[name]()
            runs[name]()
        for i in range(reps):
            for name in names[i % len(names):] + names[:i % len(names)]:
                time.sleep(gap)
                runs[name]()
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
    finally:
        shards.BACKEND = saved[0]
        set_num_threads(saved[1])
    return {name: float(np.median(v)) * 1e3 for name, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=["cnn", "gpt"], default="cnn")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.05, help="seconds of pause before each step")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.gap < 0:
        ap.error("--reps must be at least 1 and --gap at least 0")
    med = measure(args.case, args.reps, args.gap)
    one, torch2 = med["fedcore 1"], med["torch 2"]
    for name, ms in med.items():
        extra = ""
        if name.startswith("fedcore 2"):
            extra = f"  self-speedup {one / ms:.2f}x  ratio to torch 2 threads {ms / torch2:.2f}"
        print(f"{args.case} {name:20s} {ms:8.2f} ms{extra}")


if __name__ == "__main__":
    main()
