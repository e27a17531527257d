"""Input validation shared by the layer ops: errors that name the op and the shapes involved.

Checks run inside each op's forward (where the arrays exist, whichever engine runs the op), so a
bad call fails at the op that received it, e.g. ``conv2d: input (32, 28, 28, 3) has 3 channels
but weight expects 1``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_features", "check_float", "check_ndim", "check_same_dtype"]


def check_float(op: str, what: str, a: np.ndarray) -> None:
    """Raise TypeError unless `a` holds floats."""
    if a.dtype.kind != "f":
        raise TypeError(f"{op}: {what} {a.shape} must be a float array, got {a.dtype}")


def check_same_dtype(op: str, **arrays: np.ndarray) -> None:
    """Raise TypeError (naming every operand's shape and dtype) unless all float dtypes agree."""
    items = list(arrays.items())
    for name, a in items:
        check_float(op, name, a)
    first = items[0][1].dtype
    if any(a.dtype != first for _, a in items[1:]):
        desc = ", ".join(f"{n} {a.shape} {a.dtype}" for n, a in items)
        raise TypeError(f"{op}: dtype mismatch: {desc}")


def check_ndim(op: str, what: str, a: np.ndarray, ndim: int, layout: str) -> None:
    """Raise ValueError unless `a` has `ndim` axes; `layout` names them (e.g. "(N, H, W, C)")."""
    if a.ndim != ndim:
        raise ValueError(f"{op}: {what} must be {ndim}-D {layout}, got shape {a.shape}")


def check_features(op: str, x: np.ndarray, **params: np.ndarray) -> int:
    """The feature count (last axis of x); every param must be (C,)."""
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be at least 2-D (..., C), got shape {x.shape}")
    check_same_dtype(op, input=x, **params)
    c = x.shape[-1]
    for name, p in params.items():
        if p.shape != (c,):
            raise ValueError(f"{op}: {name} {p.shape} does not match input {x.shape} "
                             f"({c} features)")
    return c
