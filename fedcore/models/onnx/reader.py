"""Read an ONNX file into a `GraphSpec` with the `onnx` package (imported lazily).

What it normalises on the way in: Constant nodes become constants; initializers that are also
listed as graph inputs (old exporters) are not inputs; and the `Identity` nodes PyTorch's
exporter adds when it merges initializers with equal values (two fresh LayerNorms' weights,
two encoder layers deep-copied from one) are undone, so every parameter trains on its own.
External tensor data is refused (it would make the file name other files to read).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .spec import MAX_FILE_BYTES, GraphSpec, NodeSpec, OnnxImportError, ValueSpec, check_graph

__all__ = ["read_onnx"]

_DTYPES = {"float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise OnnxImportError("reading .onnx files needs the 'onnx' package: pip install "
                              "'fedcore[export]' (a file written by `fedcore models import` "
                              "does not)") from None
    return onnx


def _array(onnx: Any, t: Any, where: str) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise OnnxImportError(f"{where}: tensor {t.name!r} keeps its data in an external file; "
                              f"save the model with its weights inside (save_as_external_data="
                              f"False)")
    try:
        arr = onnx.numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - a malformed tensor, reported as one line
        raise OnnxImportError(f"{where}: tensor {t.name!r} is malformed ({e})") from None
    if arr.dtype.name not in _DTYPES:
        raise OnnxImportError(f"{where}: tensor {t.name!r} has unsupported type {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return np.array(arr)  # own, writable memory


def _attr(onnx: Any, a: Any, where: str) -> Any:
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise OnnxImportError(f"{where}: attribute {a.name!r} is a subgraph (If/Loop/Scan "
                              f"control flow is not supported)")
    if a.type == onnx.AttributeProto.TENSOR:
        return _array(onnx, a.t, where)
    if a.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS,
                  onnx.AttributeProto.TENSORS, onnx.AttributeProto.TYPE_PROTO,
                  onnx.AttributeProto.TYPE_PROTOS):
        raise OnnxImportError(f"{where}: attribute {a.name!r} of this kind is not supported")
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _value(onnx: Any, v: Any, where: str) -> ValueSpec:
    tt = v.type.tensor_type
    if not v.type.HasField("tensor_type"):
        raise OnnxImportError(f"{where}: {v.name!r} is not a tensor (sequences and maps are not "
                              f"supported)")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except Exception:  # noqa: BLE001
        dtype = "unknown"
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return ValueSpec(v.name, tuple(dims), dtype)


def _constant(onnx: Any, node: Any, spec_where: str) -> np.ndarray:
    attrs = {a.name: a for a in node.attribute}
    if len(attrs) != 1:
        raise OnnxImportError(f"{spec_where}: expects exactly one value attribute")
    (name, a), = attrs.items()
    if name == "value":
        return _array(onnx, a.t, spec_where)
    simple = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}
    if name not in simple:
        raise OnnxImportError(f"{spec_where}: attribute {name!r} is not supported")
    return np.asarray(onnx.helper.get_attribute_value(a), simple[name])


def read_onnx(path: str | os.PathLike[str]) -> GraphSpec:
    """Parse, normalise and check the ONNX file at `path` (OnnxImportError if anything is off)."""
    onnx = _onnx()
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise OnnxImportError(f"{p}: cannot read ({e.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise OnnxImportError(f"{p}: {size} bytes is more than the {MAX_FILE_BYTES} allowed")
    try:
        model = onnx.load_model_from_string(p.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise OnnxImportError(f"{p}: not a valid ONNX file (truncated or corrupt protobuf: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not g.node:
        raise OnnxImportError(f"{p}: not a valid ONNX model (no default-domain opset or no "
                              f"nodes; is the file truncated?)")
    label = g.name or p.stem
    initializers: dict[str, np.ndarray] = {}
    for t in g.initializer:
        initializers[t.name] = _array(onnx, t, f"graph {label!r}")
    if g.sparse_initializer:
        raise OnnxImportError(f"graph {label!r}: sparse initializers are not supported")
    constants: dict[str, np.ndarray] = {}
    nodes: list[NodeSpec] = []
    for i, n in enumerate(g.node):
        name = n.name or (n.output[0] if n.output else f"#{i}")
        where = f"node {name!r} ({n.op_type}, opset {opset})"
        if n.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{where}: op domain {n.domain!r} is not supported")
        if n.op_type == "Constant":
            if len(n.output) != 1:
                raise OnnxImportError(f"{where}: expects one output")
            constants[n.output[0]] = _constant(onnx, n, where)
            continue
        attrs = {a.name: _attr(onnx, a, where) for a in n.attribute}
        node = NodeSpec(name, n.op_type, list(n.input), list(n.output), attrs)
        if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in initializers:
            initializers[n.output[0]] = initializers[n.input[0]].copy()  # undo value merging
            continue
        nodes.append(node)
    inputs = [_value(onnx, v, f"graph {label!r}") for v in g.input if v.name not in initializers]
    outputs = [_value(onnx, v, f"graph {label!r}") for v in g.output]
    spec = GraphSpec(label, int(opset), nodes, inputs, outputs, initializers, constants)
    check_graph(spec)
    return spec
