"""Buffers: module state that is not trained (batch-norm running statistics).

A `Buffer` is a tensor a module assigns as an attribute; it is written by in-place engine ops
(so its version moves and autograd sees it) but never by an optimizer, and it is NOT part of
the flat parameter vector: `get_flat()` stays "the trainable parameters", and a running-stat
update mid-step cannot bump the version of the parameter buffer (which would trip the mutation
check on weights saved for backward). Each buffer is its own var.

Federated averaging of batch-norm statistics (the common choice, and what a server needs to
evaluate the global model) uses `get_state` / `set_state`: the flat parameters followed by every
buffer, in `named_buffers` order, as one float32 vector. For a model without buffers this is
exactly `get_flat()` / `set_flat()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..engine import Tensor, get_engine
from .module import Module

__all__ = ["Buffer", "get_state", "named_buffers", "set_state", "state_size"]


class Buffer(Tensor):
    """A non-trainable tensor owned by a module (found by `named_buffers`)."""

    __slots__ = ()

    def __init__(self, data: Any, name: str = ""):
        super().__init__(np.array(data), requires_grad=False, name=name)  # own copy


def named_buffers(module: Module, prefix: str = "") -> Iterator[tuple[str, Buffer]]:
    """(dotted name, buffer) for every Buffer attribute of `module` and its descendants."""
    seen: set[int] = set()
    for mod_name, mod in module.named_modules(prefix):
        for name, value in vars(mod).items():
            if isinstance(value, Buffer) and id(value) not in seen:
                seen.add(id(value))
                yield (f"{mod_name}.{name}" if mod_name else name), value


def state_size(module: Module) -> int:
    """Length of the `get_state` vector: parameters plus buffers."""
    return module.layout.size + sum(b.size for _, b in named_buffers(module))


def get_state(module: Module) -> np.ndarray:
    """Parameters then buffers as one float32 vector (a copy): what FedAvg of BN stats sends."""
    parts = [module.get_flat()]
    for _, buf in named_buffers(module):
        parts.append(buf.data.astype(np.float32).ravel())
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def set_state(module: Module, vec: np.ndarray) -> None:
    """Overwrite parameters and buffers from a `get_state` vector (each buffer write is an op)."""
    arr = np.asarray(vec)
    size = state_size(module)
    if arr.dtype != np.float32 or arr.ndim != 1 or arr.size != size:
        raise ValueError(f"set_state expects a 1-D float32 vector of {size} elements, got a "
                         f"{arr.dtype} array of shape {arr.shape}")
    n = module.layout.size
    module.set_flat(arr[:n])
    eng = get_engine()
    for _, buf in named_buffers(module):
        src = arr[n:n + buf.size].reshape(buf.shape)
        n += buf.size
        var = buf.var

        def copy(var: Any = var, src: np.ndarray = src) -> None:
            np.copyto(var.data, src)

        eng.push(copy, (), (var,), "set_buffer")
