"""Evaluation of a model under its objective: mean loss and the loss's metric, no tape."""

from __future__ import annotations

import math

import numpy as np

from fedcore.engine import Tensor, no_grad
from fedcore.nn import Module
from fedcore.objectives import Objective, objective


def evaluate(
    model: Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024,
    loss: Objective | None = None,
) -> tuple[float, float]:
    """Return ``(mean loss, metric)`` of ``model`` on ``(x, y)``.

    The default objective is cross-entropy with accuracy. ``y`` is a label per example
    ``(N,)``, or a target per position ``(N, T)`` for a language model whose logits are
    ``(N*T, V)``: then loss and accuracy are per token (next-word accuracy), and
    ``perplexity(loss)`` is the usual perplexity. ``batch_size`` counts rows. The mean loss
    weights each batch by the items the metric counts (labels, or target elements).
    """
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    loss = loss or objective("cross_entropy")
    model.eval()
    loss_sum, metric_sum, count = 0.0, 0.0, 0
    with no_grad():
        for lo in range(0, len(y), batch_size):
            xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
            output = model(Tensor(xb))
            total, items = loss.score(output.data, yb)
            loss_sum += float(loss.loss(output, yb).data) * items
            metric_sum += total
            count += items
    return loss_sum / count, metric_sum / count


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean per-token cross-entropy in nats (inf when it overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
