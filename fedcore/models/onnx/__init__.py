"""Import ONNX models (e.g. exported from PyTorch) as trainable engine models.

    model = fedcore.models.from_onnx("model.onnx")    # needs the `onnx` package
    save_spec(read_graph("model.onnx"), "model.fcg")  # what `fedcore models import` writes
    model = fedcore.models.from_onnx("model.fcg")     # numpy + safetensors only (a device)

A device therefore never needs `onnx` (a protobuf dependency, kept in the `export` extra) nor
PyTorch: the server or the developer's machine imports once and ships the `.fcg` file. See
`module` for what becomes a parameter, a buffer or a constant, `registry` for the op table
(`supported_ops()`), `scheme` for the "onnx:PATH" model reference and `summary` for the
one-step check `fedcore models import` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .module import OnnxModel
from .registry import supported_ops
from .spec import MAX_OPSET, MIN_OPSET, GraphSpec, OnnxImportError, load_spec, save_spec

__all__ = ["MAX_OPSET", "MIN_OPSET", "GraphSpec", "OnnxImportError", "OnnxModel", "from_onnx",
           "read_graph", "save_spec", "supported_ops"]


def _is_imported_file(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length and then '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise OnnxImportError(f"{path}: cannot read ({e.strerror})") from None
    return len(head) == 9 and head[8:9] == b"{"


def read_graph(path: str | os.PathLike[str]) -> GraphSpec:
    """The checked graph of an ONNX file or of a file `fedcore models import` wrote."""
    p = Path(path)
    if _is_imported_file(p):
        return load_spec(p)
    from .reader import read_onnx

    return read_onnx(p)


def from_onnx(path: str | os.PathLike[str], *, seed: int = 0) -> OnnxModel:
    """An engine model built from an ONNX graph (or an imported-graph file).

    Initializers the graph reads as data become trainable parameters (in the file's layout,
    under the file's names), BatchNormalization running statistics become buffers, and
    everything else stays constant. `seed` seeds the dropout masks. Raises OnnxImportError
    (one line naming the node, op type and opset) for anything it cannot train.
    """
    return OnnxModel(read_graph(path), seed)


from . import scheme as _scheme  # noqa: E402,F401  (registers "onnx:PATH" model references)
