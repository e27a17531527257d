"""ONNX converter for imported graphs (`fedcore.models.from_onnx`): the graph goes back out
as it came in, after import-time folding, with the trained parameters and running statistics
as its initializers. So PyTorch -> ONNX -> fedcore (federated training) -> ONNX -> onnxruntime
closes the loop through the one exporter."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.onnx import OnnxModel
from .graph import Graph, Value, register_converter

__all__: list[str] = []


@register_converter(OnnxModel)
def _imported(g: Graph, m: OnnxModel, x: Value, path: str) -> Value:
    spec = m.spec
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise ValueError(f"export_onnx: the imported graph {spec.name!r} has "
                         f"{len(spec.inputs)} inputs and {len(spec.outputs)} outputs; only "
                         f"one of each can be exported")
    x = g.to_nhwc(x)
    used = {i for n in m.nodes for i in n.inputs if i} | {spec.outputs[0].name}
    names = {spec.inputs[0].name: x.name}
    for pname, p in m.named_parameters():
        if pname in used:
            names[pname] = g.const(pname, p.numpy())
    for node in m.nodes:
        if node.op == "BatchNormalization":
            stats = m.running_stats(node).numpy()
            for k in (3, 4):
                names[node.inputs[k]] = g.const(node.inputs[k], stats[k - 3])
    for cname, value in m.constants.items():
        if cname in used and cname not in names:
            names[cname] = g.const(cname, np.asarray(value))

    def name(n: str) -> str:
        if n and n not in names:
            names[n] = g.fresh(n)
        return names.get(n, "")

    for node in m.nodes:
        attrs: dict[str, Any] = {
            k: g.onnx.numpy_helper.from_array(np.asarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in node.attrs.items()}
        g.nodes.append(g.onnx.helper.make_node(
            node.op, [name(i) for i in node.inputs], [name(o) for o in node.outputs],
            name=g.fresh(node.name or node.op), **attrs))
    out = spec.outputs[0]
    return Value(name(out.name), tuple(out.shape), integer=out.dtype.startswith("int"))
