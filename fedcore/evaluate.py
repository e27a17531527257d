"""Evaluation of a classifier or language model: mean cross-entropy and accuracy, no tape."""

from __future__ import annotations

import math

import numpy as np

from fedcore.engine import Tensor, no_grad, softmax_cross_entropy
from fedcore.nn import Module


def evaluate(
    model: Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of ``model`` on ``(x, y)``.

    ``y`` is a label per example ``(N,)``, or a target per position ``(N, T)`` for a language
    model whose logits are ``(N*T, V)``: then loss and accuracy are per token (next-word
    accuracy), and ``perplexity(loss)`` is the usual perplexity. ``batch_size`` counts rows.
    """
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with no_grad():
        for lo in range(0, len(y), batch_size):
            xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size].reshape(-1)
            logits = model(Tensor(xb))
            loss_sum += float(softmax_cross_entropy(logits, yb).data) * len(yb)
            correct += int((np.argmax(logits.data, axis=1) == yb).sum())
            count += len(yb)
    return loss_sum / count, correct / count


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean per-token cross-entropy in nats (inf when it overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
