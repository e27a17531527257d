"""Calibrate the virtual clock: how much of a machine's matmul speed the engine reaches.

A device class states its sustained float32 GFLOP/s (HPL-class figures: an optimised GEMM on
every core). Training with the engine does not run at GEMM speed: small products, im2col,
elementwise kernels, Python between kernels and the optimizer all cost time that no FLOP
counts. So the clock divides a client's counted training FLOPs by
``sustained_gflops x efficiency(family)``, where the efficiency of a model family is

    efficiency = engine training FLOP/s / float32 matmul FLOP/s

both measured here, on the same machine, with the same threads, minutes apart. The ratio (not
either speed) is what carries from this machine to a device class: the assumption, stated in
``device_profiles/efficiency.toml``, is that the engine's overheads scale with the device's
compute like its GEMM does. ``fedcore profiles calibrate --write`` re-measures and rewrites
that file.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from client_runtime.cost import model_family, training_flops
from client_runtime.trainer import train_local
from device_profiles import measure_gflops
from device_profiles.efficiency import EFFICIENCY_FILE
from fedcore.models import build_model
from fedcore.nn import Module
from fedcore.settings import TrainSettings


@dataclass(frozen=True)
class Reference:
    """A model of one family at the size a shipped scenario trains it, and data to fit."""

    build: Callable[[], Module]
    input_shape: tuple[int, ...]
    what: str
    vocab: int = 0  # > 0: inputs are token ids and every position has a target
    examples: int = 512  # one epoch over this many: a second or so on a laptop core

    def data(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random examples and targets of the right shapes."""
        if self.vocab:
            tokens = rng.integers(0, self.vocab, size=(n, *self.input_shape))
            return tokens, rng.integers(0, self.vocab, size=(n, *self.input_shape))
        x = rng.standard_normal((n, *self.input_shape), dtype=np.float32)
        return x, rng.integers(0, 10, size=n)


REFERENCES: dict[str, Reference] = {
    "mlp": Reference(
        lambda: build_model("mlp", input_dim=64, num_classes=10, hidden=(64,)),
        (64,), "mlp 64-64-10 (quickstart)"),
    "cnn": Reference(
        lambda: build_model("cnn", num_classes=10, input_shape=(28, 28, 1),
                            channels=(8, 16), hidden=64),
        (28, 28, 1), "cnn [8, 16] + 64 on 28x28 (iot_boards_cnn)"),
    "rnn": Reference(
        lambda: build_model("lstm", num_classes=80, embed_dim=64, hidden=128),
        (32,), "lstm 64/128, 32 steps (lstm_lm)", vocab=80),
    "transformer": Reference(
        lambda: build_model("tiny_gpt", vocab_size=80, embed_dim=128, n_layers=2),
        (64,), "tiny_gpt 128 wide, 2 layers, 64 tokens", vocab=80, examples=64),
}


@dataclass(frozen=True)
class Measurement:
    """One family's achieved training speed against the machine's matmul speed."""

    family: str
    what: str
    train_gflops: float
    matmul_gflops: float

    @property
    def efficiency(self) -> float:
        """Engine training FLOP/s as a fraction of matmul FLOP/s."""
        return self.train_gflops / self.matmul_gflops


def measure_family(family: str, *, examples: int | None = None, batch_size: int = 32,
                   repeats: int = 3) -> Measurement:
    """Train the family's reference model for one epoch over ``examples`` random examples
    (default: the reference's),
    ``repeats`` times (after a warm-up epoch), and compare its median FLOP/s with a one-second
    matmul probe taken right before and after (the better of the two: a device class states
    its GEMM's sustained best)."""
    ref = REFERENCES[family]
    examples = examples or ref.examples
    batch_size = min(batch_size, examples)
    rng = np.random.default_rng(0)
    x, y = ref.data(rng, examples)
    model = ref.build()
    config = TrainSettings(local_epochs=1, batch_size=batch_size, learning_rate=0.01)
    flops = training_flops(model, ref.input_shape, examples, 1)
    matmul_before = measure_gflops(seconds=1.0)
    train_local(model, x, y, config)  # warm-up: pool, caches, threads
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_local(model, x, y, config)
        seconds.append(time.perf_counter() - start)
    matmul = max(matmul_before, measure_gflops(seconds=1.0))  # the GEMM's sustained best
    return Measurement(family, ref.what, flops / float(np.median(seconds)) / 1e9, matmul)


def calibrate(families: list[str] | None = None, **kwargs: int) -> list[Measurement]:
    """Measure every reference family (or the ones named)."""
    return [measure_family(f, **kwargs) for f in (families or list(REFERENCES))]


def render_toml(measurements: list[Measurement], threads: int) -> str:
    """The efficiency file's text for these measurements (what ``--write`` stores)."""
    lines = [
        "# Engine training speed as a fraction of this machine's float32 matmul speed, per model",
        "# family. The virtual clock divides a client's training FLOPs by",
        "# sustained_gflops x efficiency: device classes state HPL-class (GEMM) speed, and the",
        "# engine reaches only this share of it. Assumption: the engine's overheads scale with a",
        "# device's compute as its GEMM does. Re-measure: fedcore profiles calibrate --write",
        "",
        "[measured]",
        f'date = "{date.today().isoformat()}"',
        f'machine = "{platform.machine()}, {platform.processor() or "cpu"}, {threads} threads"',
        f"matmul_gflops = {np.mean([m.matmul_gflops for m in measurements]):.2f}",
        'command = "fedcore profiles calibrate --write"',
        "",
        "[efficiency]",
    ]
    for m in measurements:
        lines.append(f"{m.family} = {m.efficiency:.4f}  # {m.what}: {m.train_gflops:.2f} GFLOP/s")
    return "\n".join(lines) + "\n"


def write(measurements: list[Measurement], threads: int, path: Path = EFFICIENCY_FILE) -> Path:
    """Store the measurements where the clock reads them."""
    path.write_text(render_toml(measurements, threads), encoding="utf-8")
    return path


__all__ = ["REFERENCES", "Measurement", "calibrate", "measure_family", "model_family", "write"]
