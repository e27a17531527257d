"""Export an engine model to ONNX: `export_onnx(model, path, input_shape)`.

The module tree is walked (see `fedcore.export.layers` for the per-layer converters) and the
model's current weights become the graph's initializers, so the file computes what the model
computes in evaluation mode (Dropout is the identity, BatchNorm uses its running statistics).
The batch axis is dynamic ("batch"), and so is the time axis ("seq") of models with an LSTM or
GRU. The input is float32, or int64 token ids for a model that starts with an Embedding; the
output is float32, named "output" (the input is "input").

`onnx` is imported only when exporting: fedcore itself does not depend on it (install the
`export` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..engine import Tensor
from ..nn import GRU, LSTM, Embedding, Module
from . import imported as _imported  # noqa: F401  (registers the converters)
from . import layers as _layers  # noqa: F401
from .graph import Dim, Graph, Value

__all__ = ["MIN_OPSET", "export_onnx", "to_onnx"]

#: the oldest opset the converters emit valid graphs for (Squeeze with an axes input)
MIN_OPSET = 13

InputSpec = Sequence[int] | np.ndarray | Tensor


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - exercised via a subprocess test
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'fedcore[export]'"
                          ) from e
    return onnx


def _first_leaf(model: Module) -> Module:
    """The first module without children, in registration order (the input layer)."""
    for _, m in model.named_modules():
        if not m._modules:
            return m
    return model


def _input_spec(model: Module, spec: InputSpec) -> tuple[tuple[int, ...], bool]:
    """(per-sample shape, integer input?) from a shape or an example batch."""
    if isinstance(spec, np.ndarray | Tensor):
        example = spec.numpy() if isinstance(spec, Tensor) else spec
        if example.ndim < 1:
            raise ValueError("export_onnx: the example input needs a batch axis")
        return tuple(example.shape[1:]), example.dtype.kind in "iub"
    try:
        shape = tuple(int(d) for d in spec)
    except TypeError:
        raise TypeError(f"export_onnx: input_shape must be a sequence of ints or an example "
                        f"array, got {type(spec).__name__}") from None
    if any(d <= 0 for d in shape) or any(int(d) != d for d in spec):
        raise ValueError(f"export_onnx: input_shape must be positive ints, got {tuple(spec)}")
    return shape, isinstance(_first_leaf(model), Embedding)


def to_onnx(model: Module, input_shape: InputSpec, opset: int = 17) -> Any:
    """Build the checked `onnx.ModelProto` of `model` (see `export_onnx`)."""
    onnx = _import_onnx()
    if not isinstance(model, Module):
        raise TypeError(f"export_onnx: expected a fedcore Module, got {type(model).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"export_onnx: opset must be in [{MIN_OPSET}, {newest}], got {opset}")
    sample, integer = _input_spec(model, input_shape)
    dims: list[Dim] = ["batch", *sample]
    if len(dims) >= 2 and any(isinstance(m, LSTM | GRU) for _, m in model.named_modules()):
        dims[1] = "seq"  # recurrent models take any sequence length

    g = Graph(onnx, opset)
    x = Value(g.fresh("input"), tuple(dims), integer=integer)
    out = g.to_nhwc(g.convert(model, x, ""))
    if out.integer:
        raise ValueError("export_onnx: the model's output is integer ids; nothing to export")
    if g.nodes and g.nodes[-1].output[0] == out.name:
        g.nodes[-1].output[0] = "output"  # the last node's output is only the graph's output
    else:  # a model that is the identity (e.g. only Dropout)
        g.nodes.append(onnx.helper.make_node("Identity", [out.name], ["output"], name="output"))

    tp = onnx.TensorProto
    graph = onnx.helper.make_graph(
        g.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info("input", tp.INT64 if integer else tp.FLOAT, dims)],
        [onnx.helper.make_tensor_value_info("output", tp.FLOAT, list(out.shape))],
        initializer=g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="fedcore",
                                   producer_version=__version__)
    # the oldest IR version that carries this opset, so older runtimes can load the file
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    proto.doc_string = f"fedcore {type(model).__name__}, {model.num_parameters()} parameters"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Module, path: str | os.PathLike[str], input_shape: InputSpec,
                opset: int = 17) -> Path:
    """Write `model` (with its current weights) to the ONNX file `path`; returns the path.

    `input_shape` is one sample's shape without the batch axis, e.g. `(784,)` or `(28, 28, 1)`
    (channels-last, as the engine takes it) or `(seq_len,)` token ids; or an example batch (a
    numpy array or Tensor), whose shape past the first axis and dtype are used. Raises
    ValueError for a layer without a converter (naming it), shapes that do not fit the model,
    or an opset outside [MIN_OPSET, onnx's newest]; the file is checked with
    `onnx.checker.check_model` (full check, with shape inference) before it is written.
    """
    proto = to_onnx(model, input_shape, opset)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _import_onnx().save(proto, os.fspath(out))
    return out
