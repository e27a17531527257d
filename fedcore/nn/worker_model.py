"""A shard worker's copy of the model (`fedcore.nn.shard_workers`): what it must still match
to serve a step (`signature`), and how it takes its flat buffers from the shared mapping
(`adopt`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import Tensor, Var
from .module import Module

__all__ = ["adopt", "loaded", "signature"]


def signature(model: Module, loss: Any, x: np.ndarray, y: np.ndarray) -> tuple:
    """What a worker's snapshot of the step must still match: the modules (identity,
    training mode, plain settings, which arrays they hold), each tensor's array, with its
    version unless it is a flat parameter (those are sent every step), the loss and the rows'
    geometry. Cheap enough per step: a tuple of ids and scalars."""
    root = model._flat()[0]
    parts: list[Any] = [x.shape[1:], x.dtype.str, y.shape[1:], y.dtype.str, len(y) // len(x)]
    for _, m in model.named_modules():
        parts.append(id(m))
        for k, v in vars(m).items():
            if isinstance(v, Tensor):
                var = v._var
                parts.append((k, id(var.data), None if var.root is root else var.version))
            elif v is None or isinstance(v, bool | int | float | str):
                parts.append((k, v))
            elif not isinstance(v, Module | dict):  # children and registries: walked above
                parts.append((k, id(v)))
    return tuple(parts), loss


def adopt(model: Module, params: np.ndarray, grads: np.ndarray) -> Var:
    """In a worker: move the model's flat parameters and gradients onto the shared mapping, so
    that a step copies neither (the parent writes the parameters there, reads the gradient
    there) and the worker's pages of the old buffers stay shared with the parent. Every var of
    the model over either old buffer (the parameters', their gradients', any other tensor's
    viewing them) is rebuilt at its offset in the new one. Returns the parameters' root."""
    root, layout = model._flat()
    groot = layout.grads
    new = {id(root): params, id(groot): grads}
    views: dict[int, Var] = {}
    for _, m in model.named_modules():
        for v in vars(m).values():
            if isinstance(v, Tensor):
                for var in (v._var, v._grad):
                    if var is not None and id(var.root) in new and var is not var.root:
                        views[id(var)] = var
    moved = []
    for var in views.values():
        old, base = var.data, new[id(var.root)]
        offset = old.__array_interface__["data"][0] - var.root.data.__array_interface__["data"][0]
        moved.append((var, np.ndarray(old.shape, old.dtype, buffer=base, offset=offset,
                                      strides=old.strides)))
    for var, arr in moved:
        var.data, var._span = arr, None
    for r in (root, groot):
        r.data, r._span = new[id(r)], None
        r.forget_zero()
    return root


def loaded() -> None:
    """The op that marks the worker's parameters rewritten (the parent wrote them)."""
