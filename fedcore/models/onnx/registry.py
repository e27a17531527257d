"""The op table: for each ONNX op type, its handler, its layout class and its attributes.

A handler is `fn(rt, node, xs) -> value or list of values`, where a value is a `Tensor`
(differentiable data) or a numpy array (a constant: shapes, indices, masks). With only numpy
inputs a handler computes in numpy, which is how shape arithmetic is folded: once at import
for constant inputs, once per input shape for values derived from `Shape` (see `module`).

Layout classes tell the interpreter where a value may stay channels-last: "nhwc" ops (Conv,
pooling, BatchNormalization) take and give (N, H, W, C) for 4-D data; "elementwise" ops keep
whatever layout their data operand has; "logical" ops (the default) see ONNX's own layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...engine import Tensor
from .spec import GraphSpec, NodeSpec

__all__ = ["OPS", "OpDef", "Value", "check_ops", "const", "is_const", "register", "supported_ops"]

Value = Tensor | np.ndarray | None
Handler = Callable[[Any, NodeSpec, list[Value]], Value | list[Value]]
Check = Callable[[Any], bool]


@dataclass
class OpDef:
    """One op type: handler, layout class, accepted attributes (name -> value check or None),
    and the input positions that are settings rather than data (never parameters)."""

    fn: Handler
    layout: str = "logical"
    attrs: dict[str, Check | None] = field(default_factory=dict)
    settings: tuple[int, ...] = ()
    min_inputs: int = 1
    outputs: int = 1  # how many outputs the handler computes (the rest must be unused)


OPS: dict[str, OpDef] = {}


def register(*ops: str, layout: str = "logical", attrs: dict[str, Check | None] | None = None,
             settings: tuple[int, ...] = (), min_inputs: int = 1,
             outputs: int = 1) -> Callable[[Handler], Handler]:
    """Decorator adding a handler for `ops` to the table."""

    def deco(fn: Handler) -> Handler:
        for op in ops:
            OPS[op] = OpDef(fn, layout, dict(attrs or {}), settings, min_inputs, outputs)
        return fn

    return deco


def supported_ops() -> list[str]:
    """The ONNX op types fedcore imports, sorted."""
    return sorted(OPS)


def check_ops(spec: GraphSpec) -> None:
    """Every node's op is in the table, every attribute it sets is accepted, and no output
    the handler does not compute is used."""
    used = {i for n in spec.nodes for i in n.inputs} | {v.name for v in spec.outputs}
    for node in spec.nodes:
        op = OPS.get(node.op)
        if op is None:
            raise spec.fail(node, "op type is not supported by fedcore's importer")
        present = [i for i in node.inputs if i]
        if len(present) < op.min_inputs:
            raise spec.fail(node, f"needs at least {op.min_inputs} inputs, got {len(present)}")
        for name, value in node.attrs.items():
            if name not in op.attrs:
                raise spec.fail(node, f"attribute {name!r} is not supported")
            ok = op.attrs[name]
            if ok is not None and not ok(value):
                raise spec.fail(node, f"attribute {name}={value!r} is not supported")
        for k, out in enumerate(node.outputs[op.outputs:], op.outputs):
            if out and out in used:
                raise spec.fail(node, f"output {k} ({out!r}) is used but not supported")


def is_const(v: Value) -> bool:
    """True for a numpy constant (not a Tensor)."""
    return isinstance(v, np.ndarray)


def const(v: Value, what: str = "value") -> np.ndarray:
    """The numpy array of a constant input; a Tensor here is a graph the importer cannot run."""
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, Tensor) and v._node is None:
        return v.data
    raise ValueError(f"{what} must be a constant, not computed from trainable data")


def ints(v: Value, what: str) -> list[int]:
    """A constant as a list of Python ints."""
    return [int(i) for i in np.asarray(const(v, what)).reshape(-1)]


def one_of(*allowed: Any) -> Check:
    """An attribute check: the value is one of `allowed`."""
    return lambda v: v in allowed


ANY: None = None
