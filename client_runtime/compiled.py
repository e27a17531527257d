"""Compiled training steps for a device whose eager step would not fit its memory budget.

`compiled_step(model, config, budget)` is `model.hybridize(budget)`: one traced, planned
training step that recomputes activations until it fits the budget (or raises
`PlanBudgetError`). Steps are cached per process, per model object, budget and optimizer
settings, and a `TrainStep` caches one plan per batch shape, so tracing and planning are paid
once per process, not once per round. The optimizer state (momentum) is zeroed at the start of
every round, as eager training starts a fresh optimizer each round (FedAvg).
"""

from __future__ import annotations

import gc
from typing import Any

from fedcore.engine import softmax_cross_entropy
from fedcore.nn import Module
from fedcore.optim import SGD
from fedcore.settings import TrainSettings

#: id(model) -> (model, (budget, momentum, weight_decay), step, optimizer): one per model,
#: so a step compiled for other settings is dropped (with its arena) before a new one
_steps: dict[int, tuple[Module, tuple, Any, SGD]] = {}
MAX_MODELS = 4  # a process serves few models


def compiled_step(model: Module, config: TrainSettings, budget: int | None) -> Any:
    """The cached `TrainStep` for `model` under `budget`, ready for a new round."""
    settings = (budget, config.momentum, config.weight_decay)
    entry = _steps.get(id(model))
    if entry is None or entry[0] is not model or entry[1] != settings:
        _steps.pop(id(model), None)
        if len(_steps) >= MAX_MODELS:
            _steps.pop(next(iter(_steps)))
        entry = None
        gc.collect()  # the old step's arena and state go back before the new one is planned
        opt = SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                  weight_decay=config.weight_decay)
        step = model.hybridize(budget, optimizer=opt, loss_fn=softmax_cross_entropy)
        entry = _steps[id(model)] = (model, settings, step, opt)
    _, _, step, opt = entry
    opt.lr = config.learning_rate
    opt.step_count = 0
    for state in opt._states.values():  # momentum is local to the round
        state.data.fill(0)
    return step


def drop_compiled_step(model: Module) -> None:
    """Forget `model`'s step (its arena goes back to the pool once collected)."""
    entry = _steps.get(id(model))
    if entry is not None and entry[0] is model:
        del _steps[id(model)]


def clear_compiled_steps() -> None:
    """Drop every cached step (and its arena)."""
    _steps.clear()
