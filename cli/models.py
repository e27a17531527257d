"""``fedcore models export``: a run's global model after a round, as a file others can load.

safetensors and npz hold one named tensor per parameter; ONNX holds the whole network, and
the exported file is run with onnxruntime against the engine's own forward pass before the
command reports success.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from cli.errors import FAILED, fail
from cli.model_import import import_model
from cli.options import Db, Json, output_file, output_format
from cli.store_access import open_store

app = typer.Typer(no_args_is_help=True)
app.command("import")(import_model)
console = Console(highlight=False)
FORMATS = {".safetensors": "safetensors", ".npz": "npz", ".onnx": "onnx"}  # by extension


@app.command("export")
def export_model(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="safetensors, npz or onnx [default: from the file's extension, else "
            "safetensors].",
        ),
    ] = None,
    round_number: Annotated[
        int | None, typer.Option("--round", "-r", help="Round to export [default: the last].")
    ] = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Export a run's model after a round (checksum-verified) as safetensors, npz or ONNX."""
    from aggregator.store import StoreError
    from aggregator.store.checkpoints import CheckpointError

    fmt = output_format(out, fmt, FORMATS, "safetensors")
    output_file(out)
    store = open_store(db)
    try:
        run = store.get_run(run_id)
        row, checkpoint = store.load_checkpoint(run_id, round_number)
    except (StoreError, CheckpointError) as exc:
        fail(str(exc))
    if not run.model_spec:
        fail(f"run {run_id} has no model spec recorded (made by an older fedcore)")
    model = _model(run.model_spec, checkpoint.params)
    if fmt == "onnx":
        max_error = _export_onnx_checked(model, run.model_spec, out)
        detail = f"onnxruntime matches the engine (max abs difference {max_error:.2e})"
    else:
        tensors = {name: p.data.copy() for name, p in model.named_parameters()}
        _save_tensors(tensors, out, fmt)
        detail = f"{len(tensors)} tensors"
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "round": row.number,
                    "format": fmt,
                    "out": str(out),
                    "checkpoint_sha256": row.checkpoint_sha256,
                    "detail": detail,
                }
            )
        )
        return
    console.print(f"run {run_id} round {row.number} -> {out} ({fmt}, {detail})")


def _model(spec: dict[str, Any], params: np.ndarray) -> Any:
    from fedcore.models import build_model
    from fedcore.nn import set_state
    from fedcore.nn.lora import merge_lora

    model = build_model(spec["name"], **spec["kwargs"])
    set_state(model, params)
    model = merge_lora(model)  # LoRA runs export the base with the adapters folded in
    model.eval()
    return model


def _save_tensors(tensors: dict[str, np.ndarray], out: Path, fmt: str) -> None:
    if fmt == "npz":
        with open(out, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, **tensors)
        return
    from safetensors.numpy import save_file

    save_file(tensors, str(out), metadata={"format": "fedcore-model"})


def _export_onnx_checked(model: Any, spec: dict[str, Any], out: Path) -> float:
    """Export, then compare onnxruntime with the engine on a random batch; returns max error."""
    try:
        import onnxruntime
    except ImportError:
        fail("ONNX export needs onnx and onnxruntime: pip install 'fedcore[export]'")
    from fedcore.engine import Tensor, no_grad
    from fedcore.export import export_onnx

    shape = tuple(spec["input_shape"])
    rng = np.random.default_rng(0)
    vocab = spec["kwargs"].get("vocab_size")
    if vocab:
        batch = rng.integers(0, vocab, size=(4, *shape), dtype=np.int64)
    else:
        batch = rng.random((4, *shape), dtype=np.float32)
    export_onnx(model, out, batch)
    with no_grad():
        expected = np.asarray(model(Tensor(batch)).data)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    error = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        fail(f"exported ONNX differs from the engine (max abs difference {error:.3g})", FAILED)
    return error
