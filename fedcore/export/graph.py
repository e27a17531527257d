"""The ONNX graph under construction, and the registry of per-layer converters.

A converter turns one module into ONNX nodes: `fn(g, module, x, path) -> Value`, where `x` is
the module's input in the graph and `path` the module's dotted name (used to name its
initializers). Values carry the engine's (logical) shape; conv and pooling run on NCHW, so a
value may sit in the graph transposed to NCHW while its logical shape stays NHWC. Elementwise
layers keep either layout; everything else asks for NHWC first, so consecutive conv/pool/ReLU
layers share one pair of transposes.

Nothing here imports `onnx` at module level: the `onnx` module is handed in by the exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..nn import Module

__all__ = ["Dim", "Graph", "Value", "register_converter", "supported_layers"]

#: a dimension: a fixed size, a symbolic name ("batch", "seq"), or None when unknown
Dim = int | str | None

Converter = Callable[["Graph", Any, "Value", str], "Value"]

_CONVERTERS: dict[type, Converter] = {}


def register_converter(*types: type) -> Callable[[Converter], Converter]:
    """Decorator registering an ONNX converter for exactly these module types (no subclasses:
    a subclass may override `forward`, so it must register its own)."""

    def deco(fn: Converter) -> Converter:
        for t in types:
            _CONVERTERS[t] = fn
        return fn

    return deco


def supported_layers() -> list[str]:
    """Names of the module types the exporter can convert."""
    return sorted(t.__name__ for t in _CONVERTERS)


@dataclass
class Value:
    """A tensor in the graph: its name, its engine (logical) shape, whether it sits in NCHW,
    and whether it holds integer ids (int64) rather than float32."""

    name: str
    shape: tuple[Dim, ...]
    nchw: bool = False
    integer: bool = False

    @property
    def rank(self) -> int:
        """Number of axes."""
        return len(self.shape)


@dataclass
class Graph:
    """Accumulates nodes and initializers; names every tensor uniquely."""

    onnx: Any  # the onnx module (imported lazily by the exporter)
    opset: int
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        """A tensor name not used yet, derived from `base`."""
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        """Add `array` (float arrays as float32) as an initializer; returns its name."""
        arr = np.asarray(array)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        name = self.fresh(base)
        # np.ascontiguousarray would turn a 0-d array into shape (1,)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(arr, order="C"),
                                                                   name))
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer."""
        return self.const("const", np.array(value, np.float32))

    def node(self, op: str, inputs: list[str], base: str | None = None, **attrs: Any) -> str:
        """Append an `op` node with one output; returns the output's name."""
        out = self.fresh(base or op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def convert(self, module: Module, x: Value, path: str) -> Value:
        """Convert `module` (and its children) applied to `x`."""
        fn = _CONVERTERS.get(type(module))
        if fn is None:
            where = f" at {path!r}" if path else ""
            raise ValueError(f"export_onnx: unsupported layer {type(module).__name__}{where}; "
                             f"supported: {', '.join(supported_layers())}")
        return fn(self, module, x, path)

    # -- layout ------------------------------------------------------------------------------
    def to_nchw(self, x: Value, layer: str) -> Value:
        """`x` (logically NHWC, rank 4) physically in NCHW."""
        if x.rank != 4:
            raise ValueError(f"export_onnx: {layer} expects an (N, H, W, C) input, got shape "
                             f"{fmt_shape(x.shape)}")
        if x.nchw:
            return x
        return Value(self.node("Transpose", [x.name], perm=[0, 3, 1, 2]), x.shape, nchw=True)

    def to_nhwc(self, x: Value) -> Value:
        """`x` back in the engine's layout (a no-op unless it is in NCHW)."""
        if not x.nchw:
            return x
        return Value(self.node("Transpose", [x.name], perm=[0, 2, 3, 1]), x.shape)


def child_path(path: str, name: str) -> str:
    """Dotted name of child `name` of the module at `path`."""
    return f"{path}.{name}" if path else name


def param(module: Module, name: str) -> np.ndarray:
    """A copy of parameter/buffer `name` of `module` as float32 (waits for pending writes)."""
    return np.asarray(getattr(module, name).numpy(), np.float32)


def fmt_shape(shape: tuple[Dim, ...]) -> str:
    """A shape for error messages, unknown dims as '?'."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
