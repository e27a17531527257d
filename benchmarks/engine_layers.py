"""Training-step time of fedcore's reference CNN and LSTM against PyTorch, side by side.

    python -m benchmarks.engine_layers [--reps 40] [--threads N [N ...]] [--compiled]
        [--case cnn lstm gpt mobilenet lora onnx-resnet]

Both frameworks get the same model, the same initial weights (copied from fedcore into torch,
so the first losses must agree: a correctness check of the comparison itself), the same batch
and SGD with momentum. Repetitions are interleaved (fedcore, torch, fedcore, ...) so machine
load hits both alike, and medians are reported. torch gets as many threads as fedcore (every
core by default, or --threads), printed with the load average. Needs the `bench` extra
(torch==2.13.0). `gpt` and `lora` also print peak-memory tables, each figure from a fresh
process (benchmarks.memory_report). Several thread counts (`--threads 1 2`) run every case at
each count in turn, both frameworks alike, and print each framework's speed-up over its own
time at the first count ("self-speedup"), measured in the same run. `--compiled` times, after
each eager run, fedcore's compiled step (`model.hybridize`) against torch the same way: the step
traced and planned once and then replayed as a list of kernels, without the eager step's
per-op Python (graph recording, buffer pool, dependency checks).

Both frameworks share one process, so one's allocations must not set the other's allocator:
glibc moves its mmap threshold up to the largest block freed, so what fedcore freed decided
where torch's buffers came from (torch's CNN step measured 32-35 ms beside one fedcore build,
37-43 ms beside the next, which freed larger blocks; 34-35 ms with the thresholds fixed). The
benchmark therefore fixes them before anything runs (`pin_malloc`: mmap threshold 32 MiB, trim
threshold 64 MiB, what `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` set); `--malloc-default`
keeps glibc's moving thresholds, to compare.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable
from typing import Any  # torch is imported lazily, so its types are Any here

import numpy as np

from benchmarks.engine import fed_eager_step
from benchmarks.memory_report import memory_report
from benchmarks.modern import gpt_case, mobilenet_case
from fedcore.engine import softmax_cross_entropy
from fedcore.engine.parallel import get_num_threads, set_num_threads
from fedcore.models import build_model
from fedcore.optim import SGD

TARGETS = {"cnn": 0.9, "lstm": 1.2, "gpt": 1.0, "mobilenet": 0.9}
#: fedcore's speed-up at two (or more) threads over its own one-thread time (issue 18)
SELF_SPEEDUP = 1.6


#: glibc's mallopt parameters and the values `pin_malloc` fixes
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
PINNED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


def pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module docstring);
    False where the C library has no `mallopt` (not glibc) or refuses."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in PINNED.items())


def set_threads(requested: int | None) -> int:
    """Set (if requested) and return fedcore's thread count, which torch then gets too.

    fedcore splits large kernels and matrix products over its own threads, each calling a
    one-thread BLAS (see fedcore.engine.parallel); the default is every core this process may
    use, as PyTorch's is. With one thread, BLAS runs on one thread too.
    """
    if requested:
        set_num_threads(requested)
    return get_num_threads()


# -- the two cases: fedcore model, the same model in torch, data ----------------------------
def cnn_case(torch: Any) -> tuple:
    nn = torch.nn
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    ours = build_model("cnn", num_classes=10, seed=0)
    theirs = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10))
    p = dict(ours.named_parameters())
    with torch.no_grad():
        for i, name in ((0, "1"), (3, "4")):  # conv (KH, KW, Cin, Cout) -> (Cout, Cin, KH, KW)
            theirs[i].weight.copy_(torch.from_numpy(p[f"{name}.weight"].data.transpose(3, 2, 0, 1)))
            theirs[i].bias.copy_(torch.from_numpy(p[f"{name}.bias"].data))
        # our flatten is (h, w, c), torch's is (c, h, w): permute the dense weight's rows
        w1 = p["8.weight"].data.reshape(7, 7, 64, 128).transpose(3, 2, 0, 1).reshape(128, -1)
        theirs[7].weight.copy_(torch.from_numpy(np.ascontiguousarray(w1)))
        theirs[7].bias.copy_(torch.from_numpy(p["8.bias"].data))
        theirs[9].weight.copy_(torch.from_numpy(p["10.weight"].data.T.copy()))
        theirs[9].bias.copy_(torch.from_numpy(p["10.bias"].data))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    return ours, theirs, (x, y), (tx, torch.from_numpy(y)), 0.01


def lstm_case(torch: Any) -> tuple:
    nn = torch.nn
    vocab, embed, hidden, seq, batch = 2000, 128, 256, 35, 20
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, (batch, seq))
    y = rng.integers(0, vocab, (batch, seq))
    ours = build_model("lstm", vocab_size=vocab, embed_dim=embed, hidden=hidden, seed=0)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, embed)
            self.rnn = nn.LSTM(embed, hidden, batch_first=True)
            self.head = nn.Linear(hidden, vocab)

        def forward(self, t: Any) -> Any:
            hs, _ = self.rnn(self.embed(t))
            return self.head(hs.reshape(-1, hidden))

    theirs = LM()
    order = np.r_[0:2 * hidden, 3 * hidden:4 * hidden, 2 * hidden:3 * hidden]  # ifog -> ifgo
    with torch.no_grad():
        theirs.embed.weight.copy_(torch.from_numpy(ours.embed.weight.data))
        theirs.rnn.weight_ih_l0.copy_(torch.from_numpy(ours.rnn.w_ih.data[:, order].T.copy()))
        theirs.rnn.weight_hh_l0.copy_(torch.from_numpy(ours.rnn.w_hh.data[:, order].T.copy()))
        theirs.rnn.bias_ih_l0.copy_(torch.from_numpy(ours.rnn.bias.data[order]))
        theirs.rnn.bias_hh_l0.zero_()
        theirs.head.weight.copy_(torch.from_numpy(ours.head.weight.data.T.copy()))
        theirs.head.bias.copy_(torch.from_numpy(ours.head.bias.data))
    ty = torch.from_numpy(y.reshape(-1))
    return ours, theirs, (x, y.reshape(-1)), (torch.from_numpy(x), ty), 0.5


CASES = {"cnn": cnn_case, "lstm": lstm_case, "gpt": gpt_case, "mobilenet": mobilenet_case}


def steps(torch: Any, case: str, compiled: bool = False
          ) -> tuple[Callable[[], float], Callable[[], float]]:
    """(fedcore step, torch step), each returning its loss. `compiled`: fedcore's step is
    the hybridized one (`model.hybridize`: traced and planned once, then replayed; the same
    losses as the eager step's)."""
    ours, theirs, (x, y), (tx, ty), lr = CASES[case](torch)
    opt = SGD(ours.parameters(), lr=lr, momentum=0.9)
    if compiled:
        planned = ours.hybridize(optimizer=opt, loss_fn=softmax_cross_entropy)
    topt = torch.optim.SGD(theirs.parameters(), lr=lr, momentum=0.9)
    ce = torch.nn.functional.cross_entropy

    eager = fed_eager_step(ours, opt)

    def fedcore_step() -> float:
        return eager(x, y)

    def compiled_step() -> float:
        return planned(x, y)

    def torch_step() -> float:
        topt.zero_grad()
        loss = ce(theirs(tx), ty)
        loss.backward()
        topt.step()
        return loss.item()

    return compiled_step if compiled else fedcore_step, torch_step


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call. CPU time is the load-robust figure
    with one thread (time spent descheduled by other users' jobs is not counted); with more
    threads it sums them and only wall time is comparable."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def run_case(torch: Any, case: str, reps: int, gap: float, warmup: int = 5,
             compiled: bool = False) -> dict:
    """Interleaved timings of one case; medians in milliseconds.

    Each timed step follows a pause of `gap` seconds and one untimed step of the same
    framework. Idle worker threads keep spinning for a while after a call (OpenBLAS's for up
    to ~0.1 s, OpenMP's too): without the pause, one framework's spinning threads would steal
    a core from the other's next step. The untimed step wakes the framework's own threads, so
    the timed one is a steady-state training step.
    """
    ours, theirs = steps(torch, case, compiled)
    first = (ours(), theirs())
    for _ in range(warmup):
        ours()
        theirs()
    t_ours, t_theirs = [], []
    for i in range(reps):
        pair = [(ours, t_ours), (theirs, t_theirs)]
        for fn, acc in (pair if i % 2 == 0 else pair[::-1]):  # alternate who goes first
            time.sleep(gap)
            fn()
            acc.append(timed(fn))
    wall_o, wall_t = np.array(t_ours)[:, 0], np.array(t_theirs)[:, 0]
    cpu_o, cpu_t = np.median(np.array(t_ours)[:, 1]), np.median(np.array(t_theirs)[:, 1])
    med_o, med_t = float(np.median(wall_o)) * 1e3, float(np.median(wall_t)) * 1e3
    return {"case": case, "compiled": compiled, "fedcore_ms": med_o, "torch_ms": med_t,
            "ratio": med_o / med_t,
            "fedcore_iqr": np.percentile(wall_o, [25, 75]) * 1e3,
            "torch_iqr": np.percentile(wall_t, [25, 75]) * 1e3, "first_losses": first,
            "cpu_ms": (cpu_o * 1e3, cpu_t * 1e3), "cpu_ratio": cpu_o / cpu_t}


def main(argv: list[str] | None = None) -> None:
    """Run the chosen cases and print medians, ratios and targets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--case", nargs="+", choices=[*sorted(CASES), "lora", "onnx-resnet"],
                    default=["cnn", "lstm"],
                    help="onnx-resnet: an imported ResNet-block CNN against PyTorch, one thread "
                    "each in its own process (time and peak RSS; benchmarks.onnx_resnet); "
                    "gpt also prints peak-memory tables, lora only those (LoRA against full "
                    "fine-tuning; benchmarks.memory_report)")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="fedcore and torch threads (default: every core); several counts "
                    "run each case at each and print the self-speedup over the first")
    ap.add_argument("--compiled", action="store_true",
                    help="also time fedcore's compiled step (model.hybridize: the step traced "
                    "and planned once, then replayed without per-op dispatch) against torch")
    ap.add_argument("--malloc-default", action="store_true",
                    help="keep glibc's moving mmap/trim thresholds (one framework's frees then "
                    "change where the other's buffers come from)")
    ap.add_argument("--gap", type=float, default=0.2,
                    help="seconds of pause before each timed step (lets spinning threads sleep)")
    args = ap.parse_args(argv)
    if args.threads is not None and min(args.threads) < 1:
        ap.error("--threads: every count must be at least 1")
    counts = args.threads or [set_threads(None)]
    pinned = False if args.malloc_default else pin_malloc()
    import torch

    load0 = os.getloadavg()
    print(f"numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"thread counts {counts} (fedcore and torch alike), "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          + ("malloc thresholds fixed (mmap 32 MiB, trim 64 MiB)" if pinned
             else "glibc's moving malloc thresholds"))
    for case in args.case:
        if case == "onnx-resnet":
            from benchmarks.onnx_resnet import report

            report(args.reps)
            continue
        if case == "lora":
            continue
        first: dict | None = None
        for n in counts:
            threads = set_threads(n)
            torch.set_num_threads(threads)
            r = run_case(torch, case, args.reps, args.gap)
            print_case(r, threads, first)
            if args.compiled:
                print_case(run_case(torch, case, args.reps, args.gap, compiled=True), threads,
                           None)
            first = first or r
    memory_report([c for c in args.case if c in ("gpt", "lora")])
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


def print_case(r: dict, threads: int, first: dict | None) -> None:
    """One case's line: medians, IQRs, the ratio to torch and its target; the CPU times
    with one thread; with a first thread count before, each framework's self-speedup."""
    case = r["case"]
    fo, fi = r["fedcore_iqr"], r["torch_iqr"]
    ok = "ok" if r["ratio"] <= TARGETS[case] else "ABOVE TARGET"
    name = "compiled" if r["compiled"] else "fedcore"
    print(f"{case:5s} threads {threads}: {name} {r['fedcore_ms']:7.2f} ms "
          f"[IQR {fo[0]:.1f}-{fo[1]:.1f}]  torch {r['torch_ms']:7.2f} ms "
          f"[IQR {fi[0]:.1f}-{fi[1]:.1f}]  ratio {r['ratio']:.2f} "
          f"(target <= {TARGETS[case]}: {ok})  "
          f"first losses {r['first_losses'][0]:.5f} / {r['first_losses'][1]:.5f}")
    if threads == 1:
        co, ct = r["cpu_ms"]
        print(f"      CPU time: {name} {co:7.2f} ms  torch {ct:7.2f} ms  "
              f"ratio {r['cpu_ratio']:.2f}")
    if first is not None:
        so = first["fedcore_ms"] / r["fedcore_ms"]
        st = first["torch_ms"] / r["torch_ms"]
        mark = "ok" if so >= SELF_SPEEDUP else "BELOW TARGET"
        print(f"      self-speedup over the first count: fedcore {so:.2f}x "
              f"(target >= {SELF_SPEEDUP}: {mark})  torch {st:.2f}x")


if __name__ == "__main__":
    main()
