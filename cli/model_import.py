"""``fedcore models import MODEL.onnx --out FILE``: check an ONNX model and write it for fedcore.

The graph is read and checked (every op and attribute, then one real training step at
``--batch-size``), a table of its layers is printed with the parameter count and the memory
that step needs, and FILE is written: the imported graph with its weights, which a scenario
names as ``[model] name = "onnx:FILE"`` and a device loads with numpy and safetensors only
(no onnx, no PyTorch). Anything fedcore cannot train is one line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import fail
from cli.options import Json, output_file

console = Console(highlight=False)


def _dims(values: list[str]) -> dict[str, int]:
    out = {}
    for item in values:
        name, eq, size = item.partition("=")
        if not eq or not name or not size.isdigit() or int(size) < 1:
            fail(f"--dim: expected NAME=SIZE with a positive size, got {item!r}")
        out[name] = int(size)
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def import_model(
    model: Annotated[Path, typer.Argument(help="The ONNX file (e.g. from torch.onnx.export).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (.fcg).")],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Batch size of the checked training step.")] = 32,
    dim: Annotated[list[str] | None, typer.Option(
        "--dim", help="Size of a symbolic input axis other than the batch, NAME=SIZE.")] = None,
    as_json: Json = False,
) -> None:
    """Check an ONNX model, print its layers and one training step's memory, write FILE."""
    from fedcore.models.onnx import OnnxImportError, OnnxModel, read_graph, save_spec
    from fedcore.models.onnx.summary import check_model

    output_file(out)
    dims = _dims(dim or [])
    try:
        spec = read_graph(model)
        built = OnnxModel(spec)
        check = check_model(built, batch_size, dims)
    except (OnnxImportError, ValueError, TypeError) as exc:
        fail(f"{model}: {exc}" if str(model) not in str(exc) else str(exc))
    save_spec(spec, out)
    if as_json:
        print(json.dumps({
            "model": str(model), "out": str(out), "opset": spec.opset,
            "parameters": check.parameters, "buffer_values": check.buffer_values,
            "batch_size": batch_size, "input_shapes": [list(s) for s in check.input_shapes],
            "step_bytes": check.step_bytes, "activation_peak_bytes": check.activation_peak_bytes,
            "layers": [{"name": n, "op": op, "outputs": [list(s) for s in shapes],
                        "parameters": p} for n, op, shapes, p in check.layers],
        }))
        return
    table = Table(title=f"{model.name}: {spec.name} (opset {spec.opset})")
    for col in ("layer", "op", "output", "parameters"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for name, op, shapes, params in check.layers:
        table.add_row(name, op, ", ".join(str(s) for s in shapes), f"{params:,}" if params else "")
    console.print(table)
    console.print(f"parameters: {check.parameters:,} ({check.buffer_values:,} buffer values)")
    console.print(f"one training step at batch {batch_size} (input "
                  f"{', '.join(str(s) for s in check.input_shapes)}): {_mib(check.step_bytes)} "
                  f"(activations {_mib(check.activation_peak_bytes)}, parameters + gradients + "
                  f"momentum {_mib(check.state_bytes)})", soft_wrap=True)
    ref = out if not out.is_absolute() and ".." not in out.parts else out.name
    where = "" if ref is out else f" (run from {out.parent}: the path is relative)"
    console.print(f"wrote {out}: use it as [model] name = \"onnx:{ref}\"{where}", markup=False,
                  soft_wrap=True)
