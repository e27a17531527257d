"""`Module`: the base of every layer and model, with flat parameter vectors built in.

A model's parameters are views into ONE contiguous float32 buffer (and its gradients into a
second one), so a federated client can read or replace the whole model with one copy
(`get_flat` / `set_flat`) and optimizers can update it in one vectorised op. Builders call
`flatten_parameters()` once the model is assembled; the flat accessors call it on demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..engine import FlatLayout, Tensor, Var, find_flat, flatten_tensors, get_engine

__all__ = ["Module", "Parameter"]


class Parameter(Tensor):
    """A leaf tensor that requires grad and is registered by the Module it is assigned to."""

    __slots__ = ()

    def __init__(self, data: Any, name: str = ""):
        super().__init__(data, requires_grad=True, name=name)


class Module:
    """Base class: registers Parameters and sub-Modules assigned as attributes."""

    training: bool
    #: True when `forward` treats each sample (row of axis 0) apart from the others and draws
    #: no random numbers, given children that do the same: a training step may then split the
    #: batch into shards that run side by side (`fedcore.nn.shards`). False, the default, keeps
    #: the step whole; a layer that mixes samples only sometimes (BatchNorm while training)
    #: makes it a property.
    per_sample: bool = False

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_params" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__()")
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Compute the module's output; subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.forward(*args, **kwargs)

    # -- traversal --------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) in registration order, each parameter once."""
        seen: set[int] = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._params.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> list[Parameter]:
        """All parameters, in the same order as `named_parameters` and the flat vector."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(p.size for p in self.parameters())

    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and its descendants; returns self."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode (does not disable grad recording: use `no_grad()` for that)."""
        return self.train(False)

    # -- flat parameters --------------------------------------------------------------------
    def flatten_parameters(self) -> FlatLayout:
        """Put every parameter (and gradient) into one flat buffer; no-op if already there."""
        return self._flat()[1]

    def _flat(self) -> tuple[Var, FlatLayout]:
        named = list(self.named_parameters())
        params = [p for _, p in named]
        found = find_flat(params)
        if found is None:
            flatten_tensors(params, [n for n, _ in named])
            found = find_flat(params)
        if found is None:  # a module without parameters: an empty buffer of its own
            return Var(np.zeros(0, np.float32), "flat_params"), flatten_tensors([], [])
        return found[0], found[2]

    @property
    def layout(self) -> FlatLayout:
        """Names, shapes and offsets of the parameters in the flat vector."""
        return self._flat()[1]

    def get_flat(self) -> np.ndarray:
        """A copy of all parameters as one 1-D float32 vector."""
        root, _ = self._flat()
        get_engine().wait_for_var(root)
        return root.data.copy()

    def set_flat(self, vec: np.ndarray) -> None:
        """Overwrite all parameters from a 1-D float32 vector (one copy; bumps versions)."""
        root, layout = self._flat()
        arr = vec if isinstance(vec, np.ndarray) else np.asarray(vec)
        if arr.dtype != np.float32 or arr.ndim != 1 or arr.size != layout.size:
            raise ValueError(
                f"set_flat expects a 1-D float32 vector of {layout.size} elements, got a "
                f"{arr.dtype} array of shape {arr.shape} ({arr.size} elements)"
            )

        def copy() -> None:
            np.copyto(root.data, arr)

        get_engine().push(copy, (), (root,), "set_flat")

    def grad_flat(self) -> np.ndarray:
        """All gradients as one 1-D float32 vector: a read-only live view, not a copy."""
        layout = self._flat()[1]
        get_engine().wait_for_var(layout.grads)
        view = layout.grads.data.view()
        view.flags.writeable = False
        return view

    def zero_grad(self) -> None:
        """Zero every parameter's gradient in place (one op on the flat gradient buffer)."""
        groot = self._flat()[1].grads

        def zero() -> None:
            groot.data.fill(0)
            groot.mark_zeroed()

        get_engine().push(zero, (), (groot,), "zero_grad")

    def hybridize(self, budget_bytes: int | None = None, *, optimizer: Any,
                  loss_fn: Any = None) -> Any:
        """Compile one training step into a planned, allocation-free replay (a `TrainStep`).

        `step = model.hybridize(optimizer=opt)` then `loss = step(x, y)` runs forward,
        `loss_fn` (default softmax cross-entropy), backward and `optimizer`'s update. With
        `budget_bytes` the planner recomputes activations until the step fits, or raises
        `PlanBudgetError` naming the smallest budget that would. A batch of a new shape (a
        smaller last batch) is traced and planned once more, then cached: it never falls back
        to eager. See `fedcore.engine.hybrid`.
        """
        from ..engine.hybrid import compile_step
        from ..engine.losses import softmax_cross_entropy

        return compile_step(self, loss_fn or softmax_cross_entropy, optimizer, budget_bytes)

    def join_shards(self, shards: list[Module]) -> None:
        """After a sharded step (`fedcore.nn.shards`), fold into this module, which ran the
        first shard, what its replicas in `shards` (the other shards, in order) kept from
        their forward: an RNN's final state. Nothing by default."""

    def extra_repr(self) -> str:
        """Extra text inside this module's repr."""
        return ""

    def __repr__(self) -> str:
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(lines) + "\n)" if lines else ")")
