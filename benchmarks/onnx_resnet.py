"""A ResNet-block CNN exported from PyTorch and trained by fedcore, against PyTorch itself.

    python -m benchmarks.engine_layers --case onnx-resnet [--reps 30]

The parent process (which has torch) builds the CNN (a stem conv and two ResNet basic blocks
with BatchNorm, the second strided with a projection shortcut, global average pooling and a
classifier), exports it with `torch.onnx.export` and imports it with `fedcore models import`'s
code into an imported-graph file. Then each side trains in its own fresh process on one
thread: fedcore loads the imported file (it never imports torch or onnx: what a device
runs), PyTorch the same weights. Both report the median step time (forward, backward,
SGD-momentum update) and the process's peak RSS; the sides alternate, twice each, so load
drift hits both. The first losses must agree (the same model on the same batch).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SHAPE, CLASSES, LR = 32, (3, 32, 32), 10, 0.01
TARGETS = {"time": 1.0, "rss": 0.25}


def torch_model(torch: Any) -> Any:
    """The CNN in PyTorch."""
    nn, F = torch.nn, torch.nn.functional  # noqa: N806

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout)) if stride != 1 or cin != cout
                          else nn.Identity())

        def forward(self, x: Any) -> Any:
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.short(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.ReLU())
            self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2))
            self.fc = nn.Linear(32, CLASSES)

        def forward(self, x: Any) -> Any:
            y = self.blocks(self.stem(x))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))

    torch.manual_seed(0)
    return Net()


def prepare(folder: Path) -> None:
    """Export, import and save what both sides load (needs torch and onnx)."""
    import torch

    from fedcore.models.onnx import read_graph, save_spec

    model = torch_model(torch).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *SHAPE)).astype(np.float32)
    y = rng.integers(0, CLASSES, BATCH)
    torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(folder / "net.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    save_spec(read_graph(folder / "net.onnx"), folder / "net.fcg")
    torch.save(model.state_dict(), folder / "net.pt")
    np.savez(folder / "batch.npz", x=x, y=y)


def _fedcore_step(folder: Path) -> Any:
    from fedcore.engine import Tensor, softmax_cross_entropy
    from fedcore.engine.parallel import set_num_threads
    from fedcore.models import from_onnx
    from fedcore.optim import SGD

    set_num_threads(1)
    batch = np.load(folder / "batch.npz")
    x, y = Tensor(batch["x"]), batch["y"]
    model = from_onnx(folder / "net.fcg").train()
    opt = SGD(model.parameters(), lr=LR, momentum=0.9)

    def step() -> float:
        opt.zero_grad()
        loss = softmax_cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.data)

    return step


def _torch_step(folder: Path) -> Any:
    import torch

    torch.set_num_threads(1)
    batch = np.load(folder / "batch.npz")
    x, y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])
    model = torch_model(torch).train()
    model.load_state_dict(torch.load(folder / "net.pt"))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def peak_rss_mib() -> float:
    """This process's peak resident set. VmHWM belongs to the address space, which exec
    replaces; ru_maxrss would carry over the parent's peak through fork (the parent holds
    torch), so it is only the fallback off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, folder: Path, reps: int, warmup: int = 3) -> dict:
    """Time `reps` training steps of one side in this process; its peak RSS."""
    step = _fedcore_step(folder) if side == "fedcore" else _torch_step(folder)
    first = step()
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    heavy = sorted(m for m in ("torch", "onnx") if m in sys.modules)
    return {"side": side, "ms": 1e3 * statistics.median(wall),
            "cpu_ms": 1e3 * statistics.median(cpu), "first_loss": first,
            "peak_rss_mib": peak_rss_mib(),
            "imported": heavy}


def _spawn(side: str, folder: Path, reps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "FEDCORE_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.onnx_resnet", side, str(folder),
                          str(reps)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(reps: int, rounds: int = 2) -> dict:
    """Both sides, alternating `rounds` times; medians and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        results: dict[str, list[dict]] = {"fedcore": [], "torch": []}
        for _ in range(rounds):
            for side in results:
                results[side].append(_spawn(side, folder, reps))
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("ms", "cpu_ms",
                                                                   "peak_rss_mib")}
           for side, rs in results.items()}
    return {"fedcore": med["fedcore"], "torch": med["torch"],
            "time_ratio": med["fedcore"]["ms"] / med["torch"]["ms"],
            "cpu_ratio": med["fedcore"]["cpu_ms"] / med["torch"]["cpu_ms"],
            "rss_ratio": med["fedcore"]["peak_rss_mib"] / med["torch"]["peak_rss_mib"],
            "first_losses": (results["fedcore"][0]["first_loss"],
                             results["torch"][0]["first_loss"]),
            "fedcore_imported": results["fedcore"][0]["imported"]}


def report(reps: int) -> None:
    """Run and print one line per measure, against the targets."""
    r = run(reps)
    f, t = r["fedcore"], r["torch"]
    ok = {k: "ok" if r[f"{k}_ratio"] <= v else "ABOVE TARGET" for k, v in TARGETS.items()}
    print(f"onnx-resnet (1 thread, batch {BATCH}x{SHAPE}): fedcore {f['ms']:.2f} ms, torch "
          f"{t['ms']:.2f} ms, ratio {r['time_ratio']:.2f} (target <= {TARGETS['time']}: "
          f"{ok['time']}); CPU ratio {r['cpu_ratio']:.2f}")
    print(f"            peak RSS: fedcore {f['peak_rss_mib']:.0f} MiB, torch "
          f"{t['peak_rss_mib']:.0f} MiB, ratio {r['rss_ratio']:.2f} (target <= "
          f"{TARGETS['rss']}: {ok['rss']}); first losses {r['first_losses'][0]:.5f} / "
          f"{r['first_losses'][1]:.5f}; fedcore's process imported torch/onnx: "
          f"{r['fedcore_imported'] or 'no'}")


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
