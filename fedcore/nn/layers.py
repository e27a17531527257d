"""Basic layers: Dense, ReLU, Flatten, Reshape, Sequential."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..engine import Tensor, flatten, linear, matmul, relu, relu_, reshape
from ..engine.ops import Operand, tensor
from .module import Module, Parameter

__all__ = ["Dense", "Flatten", "ReLU", "Reshape", "Sequential"]

INITS = ("he", "glorot")


class Dense(Module):
    """Fully connected layer `x @ weight + bias`, weight of shape (in_features, out_features).

    `init="he"` (normal, std sqrt(2/in), for ReLU nets) or `"glorot"` (uniform,
    limit sqrt(6/(in+out))); bias starts at zero. Pass `rng` to share a generator across
    layers, or `seed` for a fresh one.
    """

    per_sample = True

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str = "he", rng: np.random.Generator | None = None,
                 seed: int | None = None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Dense sizes must be positive, got ({in_features}, {out_features})")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        shape = (in_features, out_features)
        if init == "he":
            w = rng.normal(0.0, np.sqrt(2.0 / in_features), size=shape)
        else:
            limit = np.sqrt(6.0 / (in_features + out_features))
            w = rng.uniform(-limit, limit, size=shape)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(w.astype(np.float32), name="weight")
        self.bias = Parameter(np.zeros(out_features, np.float32), name="bias") if bias else None

    def forward(self, x: Operand) -> Tensor:
        """Apply the layer to a (..., in_features) input (leading axes are rows)."""
        t = tensor(x)
        if self.bias is not None and t.ndim >= 2:  # one op for any leading axes
            return linear(t, self.weight, self.bias)
        lead = t.shape[:-1] if t.ndim != 2 else None
        if lead is not None:
            t = reshape(t, -1, self.in_features)
        out = matmul(t, self.weight) if self.bias is None else linear(t, self.weight, self.bias)
        return out if lead is None else reshape(out, *lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """max(x, 0). `inplace=True` overwrites its input (saves a buffer; autograd checks it)."""

    per_sample = True

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Operand) -> Tensor:
        """Apply ReLU."""
        if self.inplace and isinstance(x, Tensor):
            return relu_(x)
        return relu(x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Flatten(Module):
    """(N, ...) -> (N, prod(...)) as a view."""

    per_sample = True

    def forward(self, x: Operand) -> Tensor:
        """Flatten all but the batch axis."""
        return flatten(x)


class Reshape(Module):
    """Reshape to (batch, *shape) as a view, e.g. flat pixels (N, 784) -> (N, 28, 28, 1)."""

    per_sample = True

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Operand) -> Tensor:
        """View `x` with the batch axis kept and the rest reshaped."""
        return reshape(x, -1, *self.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


class Sequential(Module):
    """Chains modules; children are named "0", "1", ..."""

    per_sample = True

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential item {i} is {type(m).__name__}, not a Module")
            setattr(self, str(i), m)

    def forward(self, x: Operand) -> Tensor:
        """Apply each module in turn."""
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
