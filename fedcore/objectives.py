"""What local training minimises and what evaluation reports: losses, their metrics, optimizers.

A loss is ``fn(output: Tensor, target: ndarray) -> Tensor`` (a scalar mean over the batch).
Built-ins: ``cross_entropy`` (labels; reports accuracy) and ``mse`` (float targets; reports
the mean absolute error). A user's loss is ``package.module:fn`` or a name in the
``fedcore.losses`` entry-point group (`LOSSES`); its metric is its ``metric`` attribute
(``"accuracy"`` or ``"mae"``), else accuracy for integer labels and MAE for float targets.
A loss that is a mean over the batch's rows, each row weighing the same, may say so with a
``mean_over_rows = True`` attribute (the built-ins do): a step may then cut the batch into
shards that run on several cores (`fedcore.nn.shards`).

Optimizers: ``sgd`` (momentum, L2 weight decay) and ``adam`` (AdamW: decoupled weight
decay). `clip_grad_norm` scales the gradients so their global L2 norm is at most a bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import Tensor, get_engine, mse, softmax_cross_entropy
from .nn import Module
from .optim import SGD, AdamW, Optimizer
from .resolve import Registry, ResolveError

__all__ = [
    "LOSSES", "METRICS", "OPTIMIZERS", "Objective", "clip_grad_norm", "make_optimizer",
    "objective",
]

LossFn = Callable[[Tensor, np.ndarray], Tensor]

#: losses by name: the built-ins, names registered later and ``fedcore.losses`` entry points
LOSSES: Registry[LossFn] = Registry("fedcore.losses", "loss")
METRICS: tuple[str, ...] = ("accuracy", "mae")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


def _cross_entropy(output: Tensor, target: np.ndarray) -> Tensor:
    # Sequence targets (N, T) meet logits (N*T, V) flattened, row-major.
    return softmax_cross_entropy(output, target.reshape(-1))


def _mse(output: Tensor, target: np.ndarray) -> Tensor:
    return mse(output, target.reshape(output.shape).astype(np.float32, copy=False))


_cross_entropy.metric = "accuracy"  # type: ignore[attr-defined]
_mse.metric = "mae"  # type: ignore[attr-defined]
_cross_entropy.mean_over_rows = _mse.mean_over_rows = True  # type: ignore[attr-defined]
LOSSES.register("cross_entropy", _cross_entropy)
LOSSES.register("mse", _mse)


@dataclass(frozen=True)
class Objective:
    """A resolved loss and the metric reported beside it."""

    name: str
    loss: LossFn
    metric: str

    def score(self, output: np.ndarray, target: np.ndarray) -> tuple[float, int]:
        """The metric's sum over a batch and how many items it counts (for a running mean):
        correct predictions for accuracy, absolute errors for MAE."""
        if self.metric == "accuracy":
            labels = target.reshape(-1)
            predicted = np.argmax(output.reshape(len(labels), -1), axis=1)
            return float((predicted == labels).sum()), len(labels)
        flat = target.reshape(-1).astype(np.float64)
        return float(np.abs(output.reshape(-1).astype(np.float64) - flat).sum()), flat.size


def objective(name: str, targets: np.ndarray | None = None, *,
              allow_import: bool = True) -> Objective:
    """The loss ``name`` resolves to and its metric (see the module docstring)."""
    fn = LOSSES.get(name, allow_import=allow_import)
    if not callable(fn):
        raise ResolveError(f"loss {name!r} is a {type(fn).__name__}, not a callable")
    metric = getattr(fn, "metric", None)
    if metric is None:
        metric = "mae" if targets is not None and targets.dtype.kind == "f" else "accuracy"
    if metric not in METRICS:
        raise ResolveError(f"loss {name!r}: metric must be one of {', '.join(METRICS)}, "
                           f"got {metric!r}")
    return Objective(name, fn, metric)


def make_optimizer(name: str, model: Module, learning_rate: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> Optimizer:
    """``sgd`` (momentum, L2 weight decay) or ``adam`` (AdamW's decoupled weight decay)."""
    if name == "sgd":
        return SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                   weight_decay=weight_decay)
    if name == "adam":
        return AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")


def clip_grad_norm(model: Module, max_norm: float) -> float:
    """Scale ``model``'s gradients in place so their L2 norm is at most ``max_norm``; return
    the norm before clipping (float64 accumulation)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = model.layout.grads
    engine = get_engine()
    engine.wait_for_var(grads)
    flat = grads.data
    squares = sum(float(np.dot(c, c)) for c in np.array_split(flat, max(1, flat.size >> 16)))
    norm = math.sqrt(squares)
    if norm > max_norm:
        factor = np.float32(max_norm / (norm + 1e-6))

        def scale() -> None:
            np.multiply(grads.data, factor, out=grads.data)

        engine.push(scale, (), (grads,), "clip_grad_norm")
    return norm
