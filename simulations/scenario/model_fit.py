"""What a model builder takes, and whether it can learn a dataset: read from its signature.

The ``[model]`` keys a model accepts are its builder's keyword parameters
(``fedcore.models.MODELS``); the sizes (classes, input shape, vocabulary) come from the data.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fedcore.models import MODELS
from fedcore.models.registry import model_parameters
from simulations.datasets import Dataset

WIDTH_OF = {"hidden": "hidden layer", "channels": "conv block"}  # list keys: what one entry is


def builder_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of model ``name``'s builder (a name or a reference)."""
    return model_parameters(name)


def one_width_key(name: str, key: str) -> bool:
    """True when the builder takes a single int for list key ``key`` (lstm's ``hidden``)."""
    param = builder_parameters(name).get(key)
    if param is None or key not in WIDTH_OF:
        return False
    if param.default is not inspect.Parameter.empty:
        return type(param.default) is int
    return str(param.annotation) == "int"


def model_misfit(name: str, data: Dataset) -> str | None:
    """Why model ``name`` cannot learn ``data`` (one line), or None if it can.

    A builder that takes ``vocab_size`` is a language model and needs token sequences; any
    other needs a label per example; one that takes ``input_shape`` needs images: rows that
    stand for (H, W) or (H, W, C), or square ones (8x8 digits as 64 features).
    """
    params = builder_parameters(name)
    language_models = [m for m in MODELS if "vocab_size" in builder_parameters(m)]
    if "vocab_size" in params and not data.sequence_targets:
        return (
            f"{name!r} is a language model: it needs token sequences (e.g. dataset "
            f"'shakespeare'), not {data.name!r}"
        )
    if "vocab_size" not in params and data.sequence_targets:
        use = f" (use {' or '.join(language_models)})" if language_models else ""
        return f"{name!r} predicts a label per example, {data.name!r} a word per position{use}"
    if "input_shape" in params and not _image_like(data.input_shape):
        return (
            f"{name!r} needs images (input_shape height, width, channels), {data.name!r} has "
            f"rows of shape {tuple(data.input_shape)}"
        )
    return None


def model_arguments(
    name: str, hyperparameters: dict[str, Any], data: Dataset, seed: int
) -> dict[str, Any]:
    """The builder keywords for model ``name`` sized for ``data`` (JSON-ready).

    A language model gets ``vocab_size``; any other ``num_classes`` and, those it takes,
    ``input_dim`` (features per row) and ``input_shape`` (the image a row stands for, when
    the data says). Then ``seed`` and the ``[model]`` hyperparameters.
    """
    params = builder_parameters(name)
    if "vocab_size" in params:
        sizes: dict[str, Any] = {"vocab_size": data.num_classes}
    else:
        sizes = {"num_classes": data.num_classes, "input_dim": int(np.prod(data.input_shape))}
        if len(data.input_shape) > 1:
            sizes["input_shape"] = [int(n) for n in data.input_shape]
    sizes["seed"] = seed
    kwargs = {key: value for key, value in sizes.items() if key in params}
    return {**kwargs, **hyperparameters}


def _image_like(shape: tuple[int, ...]) -> bool:
    if len(shape) in (2, 3):
        return True
    return len(shape) == 1 and int(np.sqrt(shape[0])) ** 2 == shape[0]
