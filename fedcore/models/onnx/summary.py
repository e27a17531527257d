"""Check an imported model by running one training step, and measure what that step needs.

`check_model` builds example inputs at a batch size (symbolic dimensions other than the batch
take the sizes given), runs the graph once to list its layers, then one forward, backward and
SGD-momentum step on a fresh engine, reading the memory pool's peak. The step uses a learning
rate of 0 and restores the buffers afterwards, so checking a model does not change it. Every
failure is an OnnxImportError naming the node, before any real training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import engine as E
from ...engine import NaiveEngine, Tensor, no_grad, use_engine
from ...nn import get_state, set_state
from ...optim import SGD
from .module import OnnxModel

__all__ = ["ModelCheck", "check_model", "example_inputs"]

Layer = tuple[str, str, list[tuple[int, ...]], int]


@dataclass(frozen=True)
class ModelCheck:
    """What `check_model` found: the layers, sizes, and one training step's memory."""

    layers: list[Layer]
    parameters: int
    buffer_values: int
    input_shapes: list[tuple[int, ...]]
    activation_peak_bytes: int  # the engine pool's peak over forward + backward + update

    @property
    def state_bytes(self) -> int:
        """Parameters, their gradients and SGD momentum (float32), plus buffers."""
        return 4 * (3 * self.parameters + self.buffer_values)

    @property
    def step_bytes(self) -> int:
        """The memory one training step needs: state plus the activation peak."""
        return self.state_bytes + self.activation_peak_bytes


def example_inputs(model: OnnxModel, batch_size: int, dims: dict[str, int] | None = None
                   ) -> list[np.ndarray]:
    """Zeros shaped like each graph input: the first axis `batch_size`, other symbolic axes
    from `dims` (by name); integer inputs are token id 0."""
    dims = dims or {}
    out = []
    for v in model.spec.inputs:
        shape = []
        for i, d in enumerate(v.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch_size)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                raise ValueError(f"input {v.name!r} axis {i} ({d or '?'}) has no size; give one "
                                 f"(e.g. --dim {d or 'NAME'}=32)")
        dtype = np.int64 if v.dtype.startswith("int") else np.float32
        out.append(np.zeros(shape, dtype))
    return out


def _loss(out: Tensor) -> Tensor:
    if out.ndim == 2 and out.shape[1] > 1:  # logits: what training minimises
        return E.softmax_cross_entropy(out, np.zeros(out.shape[0], np.int64))
    return E.mean(E.mul(out, out))


def check_model(model: OnnxModel, batch_size: int, dims: dict[str, int] | None = None
                ) -> ModelCheck:
    """Run one training step of `model` at `batch_size` (see the module docstring)."""
    xs = example_inputs(model, batch_size, dims)
    state = get_state(model)
    try:
        with use_engine(NaiveEngine()) as eng:
            model.train()
            with no_grad():
                layers = model.layers(*xs)
            opt = SGD(model.parameters(), lr=0.0, momentum=0.9)
            eng.pool.reset_peak()
            opt.zero_grad()
            out = model(*xs)
            out = out[0] if isinstance(out, tuple) else out
            _loss(out).backward()
            opt.step()
            peak = eng.pool.peak_bytes
    finally:
        set_state(model, state)
    buffers = state.size - model.num_parameters()
    return ModelCheck(layers, model.num_parameters(), buffers, [x.shape for x in xs], peak)
