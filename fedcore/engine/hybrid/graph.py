"""The traced training step as a graph: values with shapes, and the forward ops making them.

A *value* is one array the step computes or reads. Its `kind` says where it lives: `temp`
values get planned buffers in the arena, `param` and `const` values are fixed arrays (the
model's flat parameters, captured constants, module buffers), `input` values are the arrays
passed to each step. A view (a reshape) is a value with a `base` and a `view` function: it has
no buffer of its own. Gradients are not values here; the planner derives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..autograd import Primitive
from .kernels import Meta, Spec

__all__ = ["FwdOp", "Graph", "Value"]


@dataclass(eq=False)
class Value:
    """One array of the step (see the module docstring for `kind`)."""

    id: int
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str
    name: str = ""
    producer: int = -1  # forward op index (temps)
    out_slot: int = 0  # which of the producer's outputs (0: result, 1...: aux buffers)
    base: int = -1  # views: the value whose buffer this one views
    view: Callable[[np.ndarray], np.ndarray] | None = None
    array: np.ndarray | None = None  # param / const
    grad: np.ndarray | None = None  # params that require grad: the gradient view
    input_index: int = -1
    requires_grad: bool = False
    var: Any = None  # const: the engine var it came from (module buffers are ordered by it)

    @property
    def nbytes(self) -> int:
        """Bytes of the array."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def fixed(self) -> bool:
        """True for values that never take arena space."""
        return self.kind != "temp"


@dataclass(eq=False)
class FwdOp:
    """One forward primitive call: value ids in and out, and what backward needs of it."""

    index: int
    prim: Primitive
    params: dict[str, Any]
    ins: tuple[int, ...]
    outs: tuple[int, ...]  # result first, then aux buffers (kept for the VJPs)
    meta: Meta
    spec: Spec | None  # None: run the primitive itself (fallback)
    record: bool = False  # gradients flow through this op
    parents: tuple[Any, ...] = ()  # per input: ("op", index) | ("param", value id) | None
    recomputable: bool = True
    side_effect: bool = False  # writes a module buffer in place: run once, never recompute
    allocs: list[tuple[tuple[int, ...], Any]] = field(default_factory=list)  # fallback
    result_alloc: int = -1  # fallback: which alloc is the result (-1: the op returns its own)
    state: Any = None  # fallback: the Ctx shared by the forward and its VJPs
    transient: int = 0  # fallback: pool bytes its forward took beyond its kept buffers

    @property
    def name(self) -> str:
        """The primitive's name."""
        return self.prim.name


@dataclass(eq=False)
class Graph:
    """The traced forward, the loss value, and the step's inputs and parameters."""

    values: list[Value]
    ops: list[FwdOp]
    loss: int
    inputs: list[int]
    params: list[int]

    def root(self, vid: int) -> int:
        """The value owning `vid`'s buffer (itself unless it is a view)."""
        v = self.values[vid]
        while v.base >= 0:
            v = self.values[v.base]
        return v.id
