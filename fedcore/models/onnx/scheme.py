"""`[model] name = "onnx:PATH"`: an imported graph as a model builder in the model registry.

The builder a reference resolves to is sized by the scenario like any other: a graph whose
input is integer token ids is a language model (`vocab_size`), any other a classifier
(`num_classes`, and `input_dim` for flat rows). Both are checked against the graph's own
output width, so a model that does not fit the data is one line before any training.

PATH may be an `.onnx` file (needs the `onnx` package) or the file `fedcore models import`
writes (numpy and safetensors only: what a device should get). It must be a relative path
without '..' (``fedcore.resolve.scheme_file``): on the operator's side inside the working
directory; on a device inside the models folder its operator configured (``fedcore client
--models DIR``), and refused without one: a message must not make a device read its files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from ...nn import Module
from ...resolve import register_scheme, scheme_file
from . import read_graph
from .module import OnnxModel
from .spec import GraphSpec, OnnxImportError

__all__ = ["onnx_builder"]

_CACHE: dict[tuple[str, int, int], GraphSpec] = {}


def _spec(path: str) -> GraphSpec:
    p = scheme_file(path, "onnx")
    try:
        st = p.stat()
    except OSError as e:
        raise OnnxImportError(f"onnx:{path}: cannot read ({e.strerror})") from None
    key = (os.fspath(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE.clear()  # one graph at a time is what a run uses
        _CACHE[key] = read_graph(p)
    return _CACHE[key]


def _width(spec: GraphSpec) -> int | None:
    dim = spec.outputs[0].shape[-1] if spec.outputs and spec.outputs[0].shape else None
    return dim if isinstance(dim, int) else None


def _check_width(path: str, spec: GraphSpec, want: int, what: str) -> None:
    have = _width(spec)
    if have is not None and have != want:
        raise OnnxImportError(f"onnx:{path}: the graph outputs {have} values per row, the data "
                              f"has {want} {what}")


def onnx_builder(path: str) -> Callable[..., Module]:
    """The builder `"onnx:PATH"` resolves to (see the module docstring)."""
    spec = _spec(path)
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise OnnxImportError(f"onnx:{path}: a scenario's model takes one input and gives one "
                              f"output; the graph has {len(spec.inputs)} and "
                              f"{len(spec.outputs)}")
    if spec.inputs[0].dtype.startswith("int"):
        def language_model(vocab_size: int, seed: int = 0) -> OnnxModel:
            """An imported language model (token ids in, next-token logits out)."""
            _check_width(path, spec, vocab_size, "tokens in its vocabulary")
            return OnnxModel(spec, seed)

        return language_model

    def classifier(num_classes: int, seed: int = 0, input_dim: int | None = None) -> OnnxModel:
        """An imported classifier (features or images in, logits out)."""
        _check_width(path, spec, num_classes, "classes")
        dims = spec.inputs[0].shape[1:]
        if input_dim is not None and all(isinstance(d, int) for d in dims):
            if math.prod(dims) != input_dim:  # type: ignore[arg-type]
                raise OnnxImportError(f"onnx:{path}: the graph takes {tuple(dims)} per row "
                                      f"({math.prod(dims)} values), the data has {input_dim}")
        return OnnxModel(spec, seed)

    return classifier


register_scheme("onnx", onnx_builder)
