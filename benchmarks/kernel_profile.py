"""Where a training step's time goes, kernel by kernel, fedcore beside PyTorch.

    python -m benchmarks.kernel_profile --case mobilenet gpt [--threads N] [--steps 20]

fedcore's side runs the step on a `NaiveEngine` whose `push` times every op it runs (an op is
one primitive's forward, one node's backward, a gradient accumulation or an optimizer step);
the time between ops (Python: module calls, graph recording, the engine's bookkeeping) is
reported as "between ops". PyTorch's side is `torch.profiler`'s self CPU time per aten op.
Both are per step, averaged over `--steps` steps after a warm-up. Times are process CPU
time (all threads together), which a busy machine disturbs far less than wall time: with one
thread they are what the step costs; with more, compare them against the 1-thread figures to
see which kernels gained work (hand-offs, spinning) rather than lost time.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from fedcore.engine import NaiveEngine, use_engine
from fedcore.engine.var import Var


class TimingEngine(NaiveEngine):
    """A synchronous engine that adds each op's wall time to `times[name]`."""

    name = "timing"

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def push(self, fn: Callable[[], None], reads: Sequence[Var], writes: Sequence[Var],
             name: str = "op") -> None:
        """Run the op as NaiveEngine does, timing it (nested pushes count in their parent)."""
        if self._running:  # nested: its time is already inside the outer op's
            super().push(fn, reads, writes, name)
            return
        t0 = time.process_time()
        try:
            super().push(fn, reads, writes, name)
        finally:
            self.times[name] += time.process_time() - t0
            self.calls[name] += 1


def fedcore_profile(step: Callable[[], float], steps: int) -> tuple[dict[str, float], float]:
    """(ms per step by op name, including 'between ops'; total ms per step)."""
    eng = TimingEngine()
    with use_engine(eng):
        for _ in range(3):
            step()
        eng.times.clear()
        eng.calls.clear()
        t0 = time.process_time()
        for _ in range(steps):
            step()
        total = (time.process_time() - t0) * 1e3 / steps
    per = {k: v * 1e3 / steps for k, v in eng.times.items()}
    per["between ops"] = total - sum(per.values())
    return per, total


def torch_profile(torch: Any, step: Callable[[], float], steps: int) -> tuple[dict[str, float],
                                                                              float]:
    """(self CPU ms per step by aten op; total process CPU ms per step, measured without
    the profiler)."""
    for _ in range(3):
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    total = (time.process_time() - t0) * 1e3 / steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    return per, total


def table(title: str, per: dict[str, float], total: float, top: int) -> None:
    """Print the `top` largest entries of `per` with their share of `total`."""
    print(f"{title}: {total:.2f} CPU ms per step")
    for name, ms in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {name:40s} {ms:7.3f} ms  {100 * ms / total:5.1f} %")


def main(argv: list[str] | None = None) -> None:
    """Profile the chosen cases of benchmarks.engine_layers."""
    from benchmarks.engine_layers import CASES, set_threads, steps

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", choices=sorted(CASES), default=["mobilenet", "gpt"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=18)
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    import torch

    torch.set_num_threads(threads)
    print(f"threads {threads} (fedcore and torch)")
    for case in args.case:
        ours, theirs = steps(torch, case)
        per, total = fedcore_profile(ours, args.steps)
        table(f"{case} fedcore", per, total, args.top)
        per_t, total_t = torch_profile(torch, theirs, args.steps)
        table(f"{case} torch (self CPU time per op; total without the profiler)", per_t,
              total_t, args.top)


if __name__ == "__main__":
    main()
