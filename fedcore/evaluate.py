"""Evaluation of a classifier: mean cross-entropy and accuracy, without recording a tape."""

from __future__ import annotations

import numpy as np

from fedcore.engine import Tensor, no_grad, softmax_cross_entropy
from fedcore.nn import Module


def evaluate(
    model: Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Return ``(mean loss, accuracy)`` of ``model`` on ``(x, y)``."""
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set")
    model.eval()
    loss_sum, correct = 0.0, 0
    with no_grad():
        for lo in range(0, len(y), batch_size):
            xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
            logits = model(Tensor(xb))
            loss_sum += float(softmax_cross_entropy(logits, yb).data) * len(yb)
            correct += int((np.argmax(logits.data, axis=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)
