"""Training under a device's memory budget, reporting what it cost (FLOPs, bytes, batch).

A node whose ``node_config`` names a device class (``protocol.DEVICE``, a catalog name) trains
with the engine's memory pool capped at that device's budget (or ``protocol.MEMORY_BUDGET``
bytes). If the eager step does not fit, the client tries the ways that keep the same step
(the same batch and gradients, up to float rounding), cheapest in compute first, each
starting the round over:

1. ``recompute``: a model that can recompute its blocks (a tiny GPT built with
   ``checkpoint = "none"``) trains eagerly with its blocks recomputed
   (`fedcore.engine.checkpoint`; any loss and optimizer);
2. ``hybrid``: the step compiled with the memory planner (``hybridize(budget)``: activations
   recomputed until it fits; cached per process, see `client_runtime.compiled`), for the
   losses and optimizers a compiled step has;
3. ``micro``: the eager step in micro-batches (`fedcore.nn.shards.train_step`
   ``micro_batch``: their gradients added, about one micro-batch of activations at a time),
   half the batch, then a quarter, down to one row, where the model and loss allow it (a
   loss that is a mean over rows, no batch norm or dropout while training).

The process remembers which way this model, batch size and budget need. Only if none fits
does the client halve its batch size and start over (``protocol.ADAPT_BATCH``: a different
step), or fail with ``DoesNotFit``, which the server records as the rejection reason. The
round's metrics say which way trained (``recompute`` / ``hybrid``: 1 on that path;
``micro_batch``: the rows of a micro-batch, 0 for the whole batch). Without a device the
budget is left alone.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client_runtime.compiled import compiled_step, drop_compiled_step
from client_runtime.cost import training_flops
from client_runtime.trainer import train_local
from fedcore import protocol
from fedcore.engine import MemoryBudgetError, get_engine
from fedcore.models.gpt import TinyGPT
from fedcore.nn import Module, get_state, set_state
from fedcore.nn.shards import accumulates
from fedcore.objectives import Objective, objective
from fedcore.settings import TrainSettings

EAGER, RECOMPUTE, HYBRID, MICRO = "eager", "recompute", "hybrid", "micro"

#: model -> {(batch size, budget): (the first path worth trying, its micro-batch rows)}: the
#: cheaper ones ran out of budget in this process
_FIRST_PATH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: tiny GPT -> the checkpoint mode it was built with (the device may switch it to "blocks")
_BUILT_MODE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _paths(model: Module, settings: TrainSettings, micro: bool) -> list[str]:
    """The ways this model may train, cheapest in compute first (`micro`: whether its steps
    may run in micro-batches)."""
    paths = [EAGER]
    if isinstance(model, TinyGPT) and _BUILT_MODE.setdefault(model, model.checkpoint) == "none":
        paths.append(RECOMPUTE)
    if (settings.loss, settings.optimizer, settings.max_grad_norm) == (
            "cross_entropy", "sgd", 0.0):  # what a compiled step does
        paths.append(HYBRID)
    if micro and _first_micro(settings) >= 1:
        paths.append(MICRO)
    return paths


def _first_micro(settings: TrainSettings) -> int:
    """The micro-batch rows the micro path starts from: half of what a step takes now."""
    return min(settings.micro_batch or settings.batch_size, settings.batch_size) // 2


def _micro_allowed(model: Module, x: np.ndarray, y: np.ndarray, settings: TrainSettings,
                   loss_fn: Objective | None) -> bool:
    """Whether this model's steps on this data may run in micro-batches (`accumulates`)."""
    loss = (loss_fn or objective(settings.loss, y, allow_import=False)).loss
    rows = min(settings.batch_size, len(x))
    return rows >= 2 and accumulates(model, loss, x[:rows], y[:rows], 1)


class DoesNotFit(RuntimeError):
    """Training cannot fit the device's memory budget, even at the smallest batch allowed."""


@dataclass(frozen=True)
class DeviceTrainResult:
    """``TrainResult`` plus the costs a simulation turns into time and energy."""

    num_examples: int
    train_loss: float
    seconds: float
    costs: dict[str, float] = field(default_factory=dict)


def device_budget(node_config: Mapping[str, Any]) -> int | None:
    """The engine budget in bytes for this node, or None (no device named)."""
    if protocol.MEMORY_BUDGET in node_config:
        return int(node_config[protocol.MEMORY_BUDGET])
    if protocol.DEVICE not in node_config:
        return None
    from device_profiles import get_profile

    return get_profile(str(node_config[protocol.DEVICE])).memory_budget_bytes


def train_on_device(
    model: Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainSettings,
    seed: int,
    node_config: Mapping[str, Any],
    loss_fn: Objective | None = None,
) -> DeviceTrainResult:
    """Train like ``train_local``, under the node's memory budget; report FLOPs and bytes."""
    budget = device_budget(node_config)
    adapt = bool(node_config.get(protocol.ADAPT_BATCH, False))
    pool = get_engine().pool
    previous = pool.budget_bytes
    start = get_state(model) if budget is not None else None
    path, micro = EAGER, 0
    allow_micro = budget is not None and _micro_allowed(model, x, y, settings, loss_fn)
    try:
        while True:
            pool.reset_peak()
            pool.budget_bytes = budget
            key = (settings.batch_size, budget)
            first = _FIRST_PATH.setdefault(model, {})
            paths = _paths(model, settings, allow_micro)
            path, micro = first.get(key, (EAGER, 0)) if budget is not None else (EAGER, 0)
            if RECOMPUTE in paths:  # the micro path keeps the blocks recomputed as well
                model.set_checkpoint("blocks" if path in (RECOMPUTE, MICRO) else "none")
            try:
                step = compiled_step(model, settings, budget) if path == HYBRID else None
                run = settings.with_values({"micro_batch": micro}) if path == MICRO else settings
                result = train_local(model, x, y, run, seed, step, loss_fn)
                break
            except MemoryBudgetError as exc:
                set_state(model, start)
                if path == HYBRID:  # its arena must not stay while a smaller batch is tried
                    drop_compiled_step(model)
                gc.collect()  # the failed step's graph holds pool buffers in reference cycles
                later = paths[paths.index(path) + 1:] if path in paths else []
                if path == MICRO and micro > 1:  # smaller micro-batches may fit
                    first[key] = (MICRO, micro // 2)
                    continue
                if budget is not None and later:  # recomputation, the planner or micro-batches
                    first[key] = (later[0], _first_micro(settings) if later[0] == MICRO else 0)
                    continue
                if not adapt or settings.batch_size == 1:
                    device = node_config.get(protocol.DEVICE, "this device")
                    raise DoesNotFit(
                        f"memory: does not fit {device} at batch size {settings.batch_size} "
                        f"({budget} bytes): {exc}"
                    ) from None
                settings = settings.with_values({"batch_size": max(1, settings.batch_size // 2)})
    finally:
        pool.budget_bytes = previous
    costs = {
        "flops": training_flops(model, x.shape[1:], len(y), settings.local_epochs),
        "peak_bytes": float(pool.peak_bytes),
        "batch_size": float(settings.batch_size),
        "recompute": float(path == RECOMPUTE),
        "hybrid": float(path == HYBRID),
        "micro_batch": float(micro if path == MICRO else settings.micro_batch),
    }
    return DeviceTrainResult(result.num_examples, result.train_loss, result.seconds, costs)
