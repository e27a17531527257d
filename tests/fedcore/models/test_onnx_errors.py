"""Malformed and unsupported ONNX files: one line naming the node, op type and opset (or the
file), raised while importing, before anything trains; the imported-graph file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedcore.engine import Tensor, no_grad  # noqa: E402
from fedcore.models import build_model, from_onnx  # noqa: E402
from fedcore.models.onnx import OnnxImportError, read_graph, save_spec, supported_ops  # noqa: E402
from fedcore.resolve import ResolveError  # noqa: E402


def _model(nodes: list, inits: list | None = None, opset: int = 18, inputs: list | None = None,
           outputs: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _dense(opset: int = 18) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
                   helper.make_node("Relu", ["h"], ["y"], name="act")], [w, b], opset)


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _raises(path: Path, *parts: str) -> str:
    with pytest.raises(OnnxImportError) as info:
        from_onnx(path)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_a_valid_graph_imports(tmp_path: Path) -> None:
    model = from_onnx(_save(_dense(), tmp_path / "ok.onnx"))
    assert [n for n, _ in model.named_parameters()] == ["w", "b"]
    with no_grad():
        assert model(Tensor(np.ones((2, 4), np.float32))).shape == (2, 3)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_protobuf(tmp_path: Path, keep: float) -> None:
    data = _dense().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(OnnxImportError) as info:
        from_onnx(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_not_onnx_at_all(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf \x00" * 10)
    _raises(path, "not a valid ONNX")
    _raises(tmp_path / "missing.onnx", "cannot read")


def test_missing_initializer(tmp_path: Path) -> None:
    proto = _dense()
    del proto.graph.initializer[0]  # "w"
    _raises(_save(proto, tmp_path / "m.onnx"), "node 'fc' (Gemm, opset 18)", "'w'",
            "missing initializer")


def test_cycle(tmp_path: Path) -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Relu", ["a"], ["y"], name="out")]
    _raises(_save(_model(nodes), tmp_path / "c.onnx"), "cycle", "opset 18")


def test_unsupported_op_and_attribute(tmp_path: Path) -> None:
    nodes = [helper.make_node("Det", ["x"], ["y"], name="det")]
    _raises(_save(_model(nodes), tmp_path / "op.onnx"), "node 'det' (Det, opset 18)",
            "not supported")
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1, bogus=3)]
    _raises(_save(_model(nodes), tmp_path / "attr.onnx"), "node 'sm' (Softmax, opset 18)",
            "'bogus'")
    nodes = [helper.make_node("Gelu", ["x"], ["y"], name="g", approximate="cubic")]
    _raises(_save(_model(nodes, opset=20), tmp_path / "val.onnx"), "(Gelu, opset 20)",
            "approximate='cubic'")
    assert {"Conv", "LSTM", "GRU", "Gemm", "Softmax", "Gather"} <= set(supported_ops())


def test_unused_and_used_extra_outputs(tmp_path: Path) -> None:
    """Y_c of an LSTM is not computed: fine unless something reads it."""
    h = 2
    w = numpy_helper.from_array(np.zeros((1, 4 * h, 4), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 4 * h, h), np.float32), "R")
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "batch", 4])]
    y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "batch", h])]
    ok = [helper.make_node("LSTM", ["x", "W", "R"], ["", "y", "c"], name="l", hidden_size=h)]
    from_onnx(_save(_model(ok, [w, r], inputs=x, outputs=y), tmp_path / "ok.onnx"))
    bad = [helper.make_node("LSTM", ["x", "W", "R"], ["", "", "y"], name="l", hidden_size=h)]
    _raises(_save(_model(bad, [w, r], inputs=x, outputs=y), tmp_path / "bad.onnx"),
            "(LSTM, opset 18)", "output 2")


def test_opset_range_domain_and_subgraphs(tmp_path: Path) -> None:
    _raises(_save(_dense(opset=16), tmp_path / "old.onnx"), "opset 16", "17-21")
    proto = _dense()
    proto.graph.node[1].domain = "com.microsoft"
    _raises(_save(proto, tmp_path / "dom.onnx"), "(Relu, opset 18)", "com.microsoft")
    branch = helper.make_graph([], "b", [], [])
    nodes = [helper.make_node("If", ["x"], ["y"], name="if", then_branch=branch,
                              else_branch=branch)]
    _raises(_save(_model(nodes), tmp_path / "if.onnx"), "(If, opset 18)", "subgraph")


def test_external_data_is_refused(tmp_path: Path) -> None:
    proto = _dense()
    t = proto.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.external_data.add(key="location", value="../../elsewhere.bin")
    _raises(_save(proto, tmp_path / "ext.onnx"), "external file")


def test_shape_errors_name_the_node(tmp_path: Path) -> None:
    model = from_onnx(_save(_dense(), tmp_path / "ok.onnx"))
    with pytest.raises(ValueError, match="should have shape"):
        model(Tensor(np.ones((2, 5), np.float32)))


def test_imported_file_needs_no_onnx_and_matches(tmp_path: Path) -> None:
    src = _save(_dense(), tmp_path / "m.onnx")
    out = save_spec(read_graph(src), tmp_path / "m.fcg")
    a, b = from_onnx(src), from_onnx(out)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with no_grad():
        np.testing.assert_array_equal(a(Tensor(x)).numpy(), b(Tensor(x)).numpy())
    bad = tmp_path / "bad.fcg"
    bad.write_bytes(out.read_bytes()[:-7])
    _raises(bad, "not a readable imported graph")


def test_model_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(_dense(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    model = build_model("onnx:m.onnx", num_classes=3, input_dim=4)
    assert model.num_parameters() == 15
    with pytest.raises(OnnxImportError, match="outputs 3 values per row, the data has 10"):
        build_model("onnx:m.onnx", num_classes=10)
    with pytest.raises(ResolveError, match="must be relative"):
        build_model(f"onnx:{tmp_path / 'm.onnx'}", num_classes=3)
    with pytest.raises(ResolveError, match="without '..'"):
        build_model("onnx:../m.onnx", num_classes=3)


def test_constants_are_bounded(tmp_path: Path) -> None:
    """A file cannot make the importer allocate a huge constant while folding."""
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge"),
             helper.make_node("Add", ["x", "big"], ["y"], name="add")]
    _raises(_save(_model(nodes, [shape]), tmp_path / "big.onnx"),
            "node 'huge' (ConstantOfShape, opset 18)", "at most")
