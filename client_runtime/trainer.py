"""Local training on a device: epochs of minibatch SGD with the fedcore engine.

The same function runs inside every backend (in-process simulation, Flower's simulation
runtime, a deployed SuperNode), so what a simulation measures is what a device does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedcore.nn import Module
from fedcore.nn.shards import train_step
from fedcore.objectives import Objective, make_optimizer, objective
from fedcore.settings import TrainSettings


@dataclass(frozen=True)
class TrainResult:
    """What a client reports besides its new parameters."""

    num_examples: int
    train_loss: float
    seconds: float


def train_local(
    model: Module, x: np.ndarray, y: np.ndarray, settings: TrainSettings, seed: int = 0,
    step: Callable[[np.ndarray, np.ndarray], float] | None = None,
    loss_fn: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``; return the mean loss over all steps.

    ``y`` holds a label per example ``(N,)``, a target per position ``(N, T)`` (language
    models, whose logits are ``(N*T, V)``) or float regression targets; ``num_examples``
    counts rows of ``x`` either way. The loss is ``loss_fn``, else ``settings.loss`` resolved
    without importing code (a registered or installed name: a message names it); the
    optimizer is ``settings.optimizer`` (sgd, or adam: AdamW), with the gradient clipped to
    ``settings.max_grad_norm`` when set.

    Batches are reshuffled every epoch from ``seed`` so a client's work is reproducible.
    The optimizer state (momentum) is local to the round, as in FedAvg. The eager step is
    `fedcore.nn.shards.train_step` (what the benchmarks time): with several threads it may cut
    a batch into shards that train side by side, and ``settings.micro_batch`` runs it in
    micro-batches instead. ``step`` (a compiled
    `TrainStep`, see `client_runtime.compiled`) replaces the eager step when given: it owns
    the optimizer and takes ``(x, flat targets)``.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0:
        raise ValueError("cannot train on an empty partition")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    loss_fn = loss_fn or objective(settings.loss, y, allow_import=False)
    optimizer = None if step is not None else make_optimizer(
        settings.optimizer, model, settings.learning_rate, settings.momentum,
        settings.weight_decay,
    )
    model.train()
    anchor = model.get_flat() if settings.proximal_mu else None
    loss_sum, steps = 0.0, 0
    for _ in range(settings.local_epochs):
        order = rng.permutation(len(y))
        for lo in range(0, len(order), settings.batch_size):
            idx = order[lo : lo + settings.batch_size]
            if step is not None:
                loss_sum += step(x[idx], y[idx].reshape(-1))
            else:  # the engine's one eager step: on several cores, the batch in shards
                loss_sum += train_step(model, loss_fn.loss, x[idx], y[idx], optimizer,
                                       settings.max_grad_norm, settings.micro_batch or None)
            if anchor is not None:  # FedProx's proximal term, applied as a decoupled step
                flat = model.get_flat()
                flat -= np.float32(settings.learning_rate * settings.proximal_mu) * (flat - anchor)
                model.set_flat(flat)
            steps += 1
    return TrainResult(
        num_examples=len(y),
        train_loss=loss_sum / steps,
        seconds=time.perf_counter() - start,
    )
