"""``fedcore models import``: checks the graph, prints layers, parameters and one step's memory,
writes the imported graph; bad input is one line and exit 2, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from fedcore.engine import Tensor, no_grad
from fedcore.models import from_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

runner = CliRunner()


def _cnn(path: Path) -> Path:
    """Conv -> BatchNorm -> Relu -> GlobalAveragePool -> Flatten -> Gemm, NCHW input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
        ("g", np.ones(4, np.float32)), ("b", np.zeros(4, np.float32)),
        ("m", np.zeros(4, np.float32)), ("v", np.ones(4, np.float32)),
        ("fw", rng.standard_normal((3, 4)).astype(np.float32)), ("fb", np.zeros(3, np.float32))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    path.write_bytes(proto.SerializeToString())
    return path


def test_import_prints_and_writes(tmp_path: Path) -> None:
    src, out = _cnn(tmp_path / "m.onnx"), tmp_path / "m.fcg"
    result = runner.invoke(app, ["models", "import", str(src), "--out", str(out), "-b", "4"])
    assert result.exit_code == 0, result.output
    for text in ("conv", "BatchNormalization", "(4, 4, 8, 8)", "parameters: 59 (8 buffer",
                 "one training step at batch 4", 'name = "onnx:'):
        assert text in result.output, result.output
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    a, b = from_onnx(src).eval(), from_onnx(out).eval()
    with no_grad():
        np.testing.assert_array_equal(a(Tensor(x)).numpy(), b(Tensor(x)).numpy())
    result = runner.invoke(app, ["models", "import", str(src), "--out", str(out), "--json"])
    report = json.loads(result.output)
    assert report["parameters"] == 59 and report["step_bytes"] > report["activation_peak_bytes"]
    assert [layer["op"] for layer in report["layers"]][0] == "Conv"


@pytest.mark.parametrize("damage", ["truncate", "unsupported", "dim"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, damage: str) -> None:
    src, out = _cnn(tmp_path / "m.onnx"), tmp_path / "m.fcg"
    args = ["models", "import", str(src), "--out", str(out)]
    if damage == "truncate":
        src.write_bytes(src.read_bytes()[:200])
    elif damage == "unsupported":
        proto = onnx.load(str(src))
        proto.graph.node[2].op_type = "Celu"
        src.write_bytes(proto.SerializeToString())
    else:
        args += ["--dim", "seq"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    if damage == "unsupported":
        assert "node 'relu' (Celu, opset 19)" in result.output
