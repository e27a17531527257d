"""Does this device's data fit the model the server sent? Checked before any training.

A device whose examples have the wrong shape, or whose labels fall outside the model's
classes, would otherwise train on garbage or fail deep inside the engine, and every update it
sent would be rejected with a confusing reason. ``data_mismatch`` compares the arrays with
the model's builder arguments (``input_dim`` / ``input_shape`` features per example,
``num_classes`` labels, ``vocab_size`` token ids, as ``simulations`` sizes them for the
scenario's data set) and returns one line saying what is wrong; ``DataMismatch`` carries it
to the server, which records it as the client's rejection reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedcore import protocol

MARK = "data check:"  # starts every mismatch line (fedcore client finds it in the node's log)


class DataMismatch(ValueError):
    """This device's data does not fit the run's model (the message is one line)."""


def _features(kwargs: dict[str, Any]) -> tuple[int | None, tuple[int, ...] | None]:
    shape = kwargs.get("input_shape")
    shape_t = tuple(int(n) for n in shape) if isinstance(shape, list | tuple) else None
    dim = kwargs.get("input_dim")
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim, shape_t
    return (math.prod(shape_t) if shape_t else None), shape_t


def data_mismatch(spec: protocol.ModelSpec, x: np.ndarray, y: np.ndarray) -> str | None:
    """None if ``(x, y)`` can train model ``spec``; else one line naming the mismatch."""
    where = f"{MARK} model {spec.name!r}"
    if len(x) != len(y) or len(y) == 0:
        return f"{where}: x has {len(x)} examples and y {len(y)}; need equal counts, > 0"
    kwargs = dict(spec.kwargs)
    vocab = kwargs.get("vocab_size")
    row = tuple(int(n) for n in x.shape[1:])
    if isinstance(vocab, int) and not isinstance(vocab, bool):
        if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() >= vocab:
            return f"{where}: x must hold token ids 0..{vocab - 1} (found {x.min():g}..{x.max():g})"
        classes: int | None = vocab
    else:
        dim, shape = _features(kwargs)
        if dim is not None and math.prod(row) != dim:
            wanted = f"{shape} ({dim} values)" if shape else f"({dim},)"
            return (
                f"{where}: each example has shape {row} ({math.prod(row)} values) but the model "
                f"takes {wanted} per example"
            )
        if shape is not None and len(row) > 1 and row != shape:
            return f"{where}: each example has shape {row} but the model takes {shape}"
        classes = kwargs.get("num_classes") if isinstance(kwargs.get("num_classes"), int) else None
    if classes is not None and y.dtype.kind == "f":  # regression: a float target per output
        if (1 if y.ndim == 1 else math.prod(y.shape[1:])) == classes:
            return None
    if classes is not None:
        if y.dtype.kind not in "iu":
            return f"{where}: y must hold integer labels 0..{classes - 1}, not {y.dtype}"
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            return (
                f"{where}: labels span {low}..{high} but the model has {classes} classes "
                f"(0..{classes - 1})"
            )
    return None


def check_data(spec: protocol.ModelSpec, x: np.ndarray, y: np.ndarray) -> None:
    """``DataMismatch`` if the data does not fit (see ``data_mismatch``)."""
    mismatch = data_mismatch(spec, x, y)
    if mismatch is not None:
        raise DataMismatch(mismatch)


__all__ = ["MARK", "DataMismatch", "check_data", "data_mismatch"]
