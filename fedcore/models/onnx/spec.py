"""The imported graph, independent of the `onnx` package: nodes, tensors, checks, file format.

`GraphSpec` is what `fedcore.models.onnx.reader` makes of an ONNX file and what an imported
model runs. It is checked completely before a model is built (opset, every node's op and
attributes, inputs that nothing produces, cycles, duplicate names), and every failure is one
`OnnxImportError` line naming the node, its op type and the opset.

It also has a file format of its own, written by `fedcore models import ... --out FILE`: one
safetensors file whose tensors are the initializers and constants and whose metadata holds
the graph as JSON. Loading it needs only numpy and safetensors, so a device trains an
imported model without the `onnx` package (and without PyTorch).
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "MAX_OPSET", "MIN_OPSET", "GraphSpec", "NodeSpec", "OnnxImportError",
           "ValueSpec", "load_spec", "save_spec"]

MIN_OPSET, MAX_OPSET = 17, 21
FORMAT = "fedcore-onnx-graph/1"
#: a graph file larger than this is refused before it is read
MAX_FILE_BYTES = 2 << 30

Dim = int | str | None


class OnnxImportError(ValueError):
    """An ONNX graph fedcore cannot train: one line, naming the node, op type and opset."""


@dataclass
class NodeSpec:
    """One node: op type, input and output names ('' for an omitted optional input)."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValueSpec:
    """A graph input or output: name, dims (ints, symbolic names or None) and element type."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: "float32", "int64", ...


@dataclass
class GraphSpec:
    """A whole graph. `initializers` may become parameters; `constants` never do."""

    name: str
    opset: int
    nodes: list[NodeSpec]
    inputs: list[ValueSpec]
    outputs: list[ValueSpec]
    initializers: dict[str, np.ndarray]
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    def where(self, node: NodeSpec) -> str:
        """The prefix of every error about `node`."""
        return f"node {node.name or node.outputs[0]!r} ({node.op}, opset {self.opset})"

    def fail(self, node: NodeSpec, what: str) -> OnnxImportError:
        """An error about `node` (raise it)."""
        return OnnxImportError(f"{self.where(node)}: {what}")


def check_graph(spec: GraphSpec) -> None:
    """Opset, producers of every input, no duplicate outputs; sorts `spec.nodes` (Kahn) and
    raises on a cycle. Op and attribute support is checked by the op table (`ops.check`)."""
    if not MIN_OPSET <= spec.opset <= MAX_OPSET:
        raise OnnxImportError(f"graph {spec.name!r}: opset {spec.opset} is not supported "
                              f"(fedcore imports opsets {MIN_OPSET}-{MAX_OPSET}; re-export "
                              f"with opset_version={MAX_OPSET - 1})")
    if not spec.inputs:
        raise OnnxImportError(f"graph {spec.name!r} has no inputs")
    if not spec.outputs:
        raise OnnxImportError(f"graph {spec.name!r} has no outputs")
    known = {v.name for v in spec.inputs} | set(spec.initializers) | set(spec.constants)
    producer: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        for out in node.outputs:
            if not out:
                continue
            if out in producer or out in known:
                raise spec.fail(node, f"output {out!r} is already defined elsewhere")
            producer[out] = i
    for node in spec.nodes:
        for name in node.inputs:
            if name and name not in known and name not in producer:
                raise spec.fail(node, f"input {name!r} is not produced by any node, initializer "
                                      f"or graph input (missing initializer?)")
    for v in spec.outputs:
        if v.name not in known and v.name not in producer:
            raise OnnxImportError(f"graph {spec.name!r}: output {v.name!r} is never produced")
    spec.nodes = _toposort(spec, producer)


def _toposort(spec: GraphSpec, producer: dict[str, int]) -> list[NodeSpec]:
    nodes = spec.nodes
    deps = [{producer[n] for n in node.inputs if n in producer} for node in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = deque(i for i, w in enumerate(waiting) if w == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if len(order) < len(nodes):
        stuck = next(nodes[i] for i, w in enumerate(waiting) if w > 0)
        raise spec.fail(stuck, "the graph has a cycle through this node")
    return [nodes[i] for i in order]


# -- the imported-graph file ---------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        return np.asarray(value["__array__"], dtype=value["dtype"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_spec(spec: GraphSpec, path: str | os.PathLike[str]) -> Path:
    """Write `spec` as one safetensors file (tensors + the graph as JSON metadata)."""
    from safetensors.numpy import save_file

    graph = {
        "name": spec.name, "opset": spec.opset,
        "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "outputs": n.outputs,
                   "attrs": {k: _jsonable(v) for k, v in n.attrs.items()}} for n in spec.nodes],
        "inputs": [[v.name, list(v.shape), v.dtype] for v in spec.inputs],
        "outputs": [[v.name, list(v.shape), v.dtype] for v in spec.outputs],
        "initializers": list(spec.initializers), "constants": list(spec.constants),
    }
    tensors = {f"i{k}": np.ascontiguousarray(v) for k, v in enumerate(spec.initializers.values())}
    tensors |= {f"c{k}": np.ascontiguousarray(v) for k, v in enumerate(spec.constants.values())}
    out = Path(path)
    save_file(tensors, os.fspath(out), metadata={"format": FORMAT, "graph": json.dumps(graph)})
    return out


def load_spec(path: str | os.PathLike[str]) -> GraphSpec:
    """Read and check a file written by `save_spec` (OnnxImportError on anything wrong)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise OnnxImportError(f"{p}: {size} bytes is more than the {MAX_FILE_BYTES} allowed")
        with safe_open(os.fspath(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise OnnxImportError(f"{p}: not an imported fedcore graph (format "
                                      f"{meta.get('format')!r}, expected {FORMAT!r})")
            g = json.loads(meta["graph"])
            inits = {n: f.get_tensor(f"i{k}") for k, n in enumerate(g["initializers"])}
            consts = {n: f.get_tensor(f"c{k}") for k, n in enumerate(g["constants"])}
        spec = GraphSpec(
            name=str(g["name"]), opset=int(g["opset"]),
            nodes=[NodeSpec(str(n["name"]), str(n["op"]), [str(i) for i in n["inputs"]],
                            [str(o) for o in n["outputs"]],
                            {str(k): _from_json(v) for k, v in n["attrs"].items()})
                   for n in g["nodes"]],
            inputs=[ValueSpec(str(n), tuple(s), str(d)) for n, s, d in g["inputs"]],
            outputs=[ValueSpec(str(n), tuple(s), str(d)) for n, s, d in g["outputs"]],
            initializers=inits, constants=consts)
    except OnnxImportError:
        raise
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as e:
        raise OnnxImportError(f"{p}: not a readable imported graph ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    check_graph(spec)
    return spec
