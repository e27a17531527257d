"""Built-in models: multi-layer perceptron and logistic regression."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..nn import Dense, ReLU, Sequential
from .registry import register_model

__all__ = ["logreg", "mlp"]


@register_model("mlp")
def mlp(input_dim: int, num_classes: int, hidden: Sequence[int] = (64,),
        seed: int = 0) -> Sequential:
    """Dense-ReLU stack `input_dim -> hidden... -> num_classes` (logits), He-initialised."""
    if isinstance(hidden, int):
        hidden = (hidden,)
    rng = np.random.default_rng(seed)
    layers = []
    width = input_dim
    for h in hidden:
        layers += [Dense(width, h, rng=rng), ReLU()]
        width = h
    layers.append(Dense(width, num_classes, init="glorot", rng=rng))
    model = Sequential(*layers)
    model.flatten_parameters()
    return model


@register_model("logreg")
def logreg(input_dim: int, num_classes: int, seed: int = 0) -> Sequential:
    """Multinomial logistic regression: one Dense layer producing logits."""
    model = Sequential(Dense(input_dim, num_classes, init="glorot",
                             rng=np.random.default_rng(seed)))
    model.flatten_parameters()
    return model
