"""The optimizer base class: parameter bookkeeping, flat state buffers, zero_grad, lr.

When the parameters are exactly one flat buffer (a Module's `parameters()`), an optimizer
updates the whole model as one vector in one engine op; otherwise it falls back to one op per
parameter. Per-parameter state (momentum, Adam's moments) lives in flat buffers of the same
layout either way, so the two paths are interchangeable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..engine import Tensor, Var, find_flat, get_engine

__all__ = ["Optimizer"]


class Optimizer:
    """Base class: subclasses implement `step()` with `_slots()` and `_state()`."""

    def __init__(self, params: Iterable[Tensor], lr: float):
        plist: list[Tensor] = []
        seen: set[int] = set()
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be Tensors, got {type(p).__name__}")
            if not (p.requires_grad and p.is_leaf):
                raise ValueError(f"parameter '{p.name}' is not a leaf that requires grad")
            if id(p) not in seen:
                seen.add(id(p))
                plist.append(p)
        if not plist:
            raise ValueError("optimizer got an empty parameter list")
        self.params = plist
        self.lr = lr
        self.step_count = 0
        sizes = [p.size for p in plist]
        self._sizes = sizes
        self._offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
        self._numel = int(sum(sizes))
        self._states: dict[str, Var] = {}

    @property
    def lr(self) -> float:
        """Learning rate; may be changed between steps (schedules)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"learning rate must be finite and >= 0, got {value}")
        self._lr = value

    def _slots(self) -> list[tuple[Var, Var, int, int]]:
        """(param var, grad var, state offset, size) per update op: one if the params are flat."""
        found = find_flat(self.params)
        if found is not None:
            return [(found[0], found[1], 0, self._numel)]
        return [
            (p._var, p._grad, off, k)
            for p, off, k in zip(self.params, self._offsets, self._sizes, strict=True)
            if p._grad is not None
        ]

    def _state(self, name: str) -> Var:
        """A zero-initialised flat float32 state buffer covering all params, made on first use."""
        var = self._states.get(name)
        if var is None:
            data = get_engine().pool.zeros((self._numel,), what=f"optimizer state '{name}'")
            var = self._states[name] = Var(data, f"{type(self).__name__}.{name}")
        return var

    def zero_grad(self) -> None:
        """Zero the gradients in place (one op when the params are one flat buffer)."""
        eng = get_engine()
        found = find_flat(self.params)
        grads = [found[1]] if found is not None else [
            p._grad for p in self.params if p._grad is not None
        ]
        for g in grads:
            def zero(g: Var = g) -> None:
                g.data.fill(0)
                if g._base is None:
                    g.mark_zeroed()

            eng.push(zero, (), (g,), "zero_grad")

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr}, params={len(self.params)})"
