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

With more than one thread it also prints, per op, the share of its CPU time spent inside
regions fedcore split over its threads (`fedcore.engine.parallel`), and the Amdahl bound that
follows for the whole step: with a share p split perfectly over n threads, the step can go at
most 1 / ((1 - p) + p / n) times faster than on one. That bound is measured from CPU time, so
a busy machine does not disturb it; the wall-clock speed-up itself needs a quiet machine
(`python -m benchmarks.engine_layers --threads 1 2`). It also counts the split regions per
step (each hands work to sleeping workers) and, in wall time, how late the workers start
their slabs and how long the caller then waits for them: what the CPU-time bound misses
(wake-ups; a slab of many numpy calls whose thread, woken after the GIL was taken again,
sleeps until the other thread's slab ends).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from fedcore.engine import NaiveEngine, parallel, use_engine
from fedcore.engine.var import Var


class TimingEngine(NaiveEngine):
    """A synchronous engine that adds each op's wall time to `times[name]`."""

    name = "timing"

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.split: dict[str, float] = defaultdict(float)  # CPU time in split regions
        self.critical: dict[str, float] = defaultdict(float)  # their critical paths
        self.regions: dict[str, int] = defaultdict(int)  # split regions (hand-offs)
        self.delays: list[float] = []  # wall from each hand-off to a worker's slab start
        self.waits: list[float] = []  # wall the caller waits after its own slab
        self.current = ""

    def push(self, fn: Callable[[], None], reads: Sequence[Var], writes: Sequence[Var],
             name: str = "op") -> None:
        """Run the op as NaiveEngine does, timing it (nested pushes count in their parent)."""
        if self._running:  # nested: its time is already inside the outer op's
            super().push(fn, reads, writes, name)
            return
        t0 = time.process_time()
        self.current = name
        try:
            super().push(fn, reads, writes, name)
        finally:
            self.times[name] += time.process_time() - t0
            self.calls[name] += 1


def _timed_split(eng: TimingEngine, split: Callable) -> Callable:
    """parallel._split, adding the CPU time of regions that really split to eng.split, and
    each region's critical path (its longest slab, by that thread's own CPU time, plus the
    region's CPU time outside any slab: hand-offs) to eng.critical; it also counts the
    regions (each one hands work to sleeping workers) and records, in wall time, how long
    after the hand-off each worker's slab started and how long the caller then waited for
    the workers after finishing its own slab."""

    open_region: list[bool] = []

    def wrapper(n: int, fn: Callable[[int, int], None], threads: int) -> None:
        if threads < 2 or open_region:  # a call inside a region runs serially, counted there
            split(n, fn, threads)
            return
        slabs: list[float] = []
        caller = threading.get_ident()
        starts: list[float] = []
        caller_end: list[float] = []

        def slab(lo: int, hi: int) -> None:
            mine = threading.get_ident() == caller
            if not mine:
                starts.append(time.perf_counter())
            t0 = time.thread_time()
            try:
                fn(lo, hi)
            finally:
                slabs.append(time.thread_time() - t0)
                if mine:
                    caller_end.append(time.perf_counter())

        t0 = time.process_time()
        w0 = time.perf_counter()
        open_region.append(True)
        try:
            split(n, slab, threads)
        finally:
            open_region.pop()
            w1 = time.perf_counter()
            region = time.process_time() - t0
            eng.split[eng.current] += region
            eng.critical[eng.current] += region - sum(slabs) + max(slabs, default=0.0)
            eng.regions[eng.current] += 1
            eng.delays.extend(s - w0 for s in starts)
            eng.waits.extend(w1 - e for e in caller_end)

    return wrapper


def fedcore_profile(step: Callable[[], float], steps: int
                    ) -> tuple[dict[str, float], float, dict[str, float], dict[str, float],
                               dict[str, float]]:
    """(CPU ms per step by op name, including 'between ops'; total CPU ms per step; CPU ms
    per step inside split regions, by op name; critical path in CPU ms per step, by op
    name: the time outside split regions plus each region's critical path; hand-offs:
    split regions per step, the median wall us from a hand-off to a worker's slab start,
    and the caller's wall ms per step spent waiting for workers after its own slab)."""
    eng = TimingEngine()
    split = parallel._split
    parallel._split = _timed_split(eng, split)
    try:
        with use_engine(eng):
            for _ in range(3):
                step()
            eng.times.clear()
            eng.calls.clear()
            eng.split.clear()
            eng.critical.clear()
            eng.regions.clear()
            eng.delays.clear()
            eng.waits.clear()
            t0 = time.process_time()
            for _ in range(steps):
                step()
            total = (time.process_time() - t0) * 1e3 / steps
    finally:
        parallel._split = split
    per = {k: v * 1e3 / steps for k, v in eng.times.items()}
    per["between ops"] = total - sum(per.values())
    split = {k: v * 1e3 / steps for k, v in eng.split.items()}
    critical = {k: ms - split.get(k, 0.0) + eng.critical.get(k, 0.0) * 1e3 / steps
                for k, ms in per.items()}
    handoffs = {"regions": sum(eng.regions.values()) / steps,
                "start_delay_us": statistics.median(eng.delays) * 1e6 if eng.delays else 0.0,
                "caller_wait_ms": sum(eng.waits) * 1e3 / steps}
    return per, total, split, critical, handoffs


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


def table(title: str, per: dict[str, float], total: float, top: int,
          split: dict[str, float] | None = None,
          critical: dict[str, float] | None = None) -> None:
    """Print the `top` largest entries of `per` with their share of `total` (and, given
    `split` and `critical`, the share of each op's time that ran split over the threads and
    the op's critical path)."""
    print(f"{title}: {total:.2f} CPU ms per step")
    for name, ms in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        extra = ""
        if split is not None and critical is not None:
            extra = (f"  split {100 * split.get(name, 0.0) / ms if ms else 0.0:5.1f} %"
                     f"  critical path {critical[name]:7.3f} ms")
        print(f"  {name:40s} {ms:7.3f} ms  {100 * ms / total:5.1f} %{extra}")


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
        one = 0.0
        if threads > 1:  # the one-thread CPU time the critical path is measured against
            set_threads(1)
            one = fedcore_profile(ours, args.steps)[1]
            set_threads(threads)
        per, total, split, crit, handoffs = fedcore_profile(ours, args.steps)
        table(f"{case} fedcore", per, total, args.top, *((split, crit) if threads > 1 else ()))
        if threads > 1:
            p = sum(split.values()) / total
            print(f"  split over {threads} threads: {100 * p:.1f} % of the CPU time; Amdahl "
                  f"bound on the speed-up over one thread {1 / ((1 - p) + p / threads):.2f}x")
            critical = sum(crit.values())
            print(f"  critical path {critical:.2f} CPU ms (the CPU time outside split regions, "
                  f"plus each region's longest slab and its hand-off time); one thread "
                  f"{one:.2f} CPU ms: speed-up bound {one / critical:.2f}x")
            print(f"  hand-offs: {handoffs['regions']:.0f} split regions per step; a worker's "
                  f"slab starts {handoffs['start_delay_us']:.0f} us after the hand-off "
                  f"(median); the caller waits {handoffs['caller_wait_ms']:.2f} ms per step "
                  f"for the workers after its own slab (wall time: load inflates both)")
        per_t, total_t = torch_profile(torch, theirs, args.steps)
        table(f"{case} torch (self CPU time per op; total without the profiler)", per_t,
              total_t, args.top)


if __name__ == "__main__":
    main()
