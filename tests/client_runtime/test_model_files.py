"""A device reads a model file a server's message names (``onnx:NAME``) only from the models
folder its operator configured (issue 13, item 7): never its working directory, never a path
out of the folder, nothing without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from client_runtime.app import make_client_app
from fedcore import protocol
from fedcore.resolve import ResolveError, device_files, scheme_file
from fedcore.settings import TrainSettings
from fedcore.wire import vector_record
from simulations.runtimes.inprocess import InProcessGrid

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

X = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
Y = np.arange(12) % 3


def dense_graph(path: Path) -> Path:
    """A 4 -> 3 dense layer as an ONNX file (15 parameters)."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path.write_bytes(model.SerializeToString())
    return path


def train(node_config: dict, name: str) -> Message:
    """One train message naming ``onnx:<name>`` to a deployed device (no imports by name)."""
    app = make_client_app(lambda pid: (X, Y))
    grid = InProcessGrid(app, 1, node_config=lambda i: {protocol.PARTITION_ID: 0, **node_config})
    spec = protocol.ModelSpec(f"onnx:{name}", {"num_classes": 3, "input_dim": 4})
    instructions = protocol.TrainInstructions(1, spec, TrainSettings(batch_size=4), 7)
    content = RecordDict({
        protocol.GLOBAL: vector_record(np.zeros(15, np.float32)),
        protocol.CONFIG: ConfigRecord(instructions.to_config()),
    })  # fmt: skip
    [reply] = grid.send_and_receive([Message(content, grid.node_id(0), "train", group_id="1")])
    return reply


def test_a_device_without_a_models_folder_reads_no_model_file(tmp_path, monkeypatch):
    dense_graph(tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)  # the file is in its working directory: still not read
    reply = train({}, "m.onnx")
    assert reply.has_error() and "no models folder" in reply.error.reason


def test_a_device_reads_the_model_from_its_operators_folder_only(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    dense_graph(models / "m.onnx")
    dense_graph(tmp_path / "outside.onnx")
    (models / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    monkeypatch.chdir(tmp_path)
    config = {protocol.MODELS_DIR: str(models)}
    reply = train(config, "m.onnx")
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert protocol.UPDATE in reply.content
    for name, why in (("outside.onnx", "cannot read"), ("link.onnx", "leads out"),
                      ("../outside.onnx", "without '..'"),
                      (str(tmp_path / "outside.onnx"), "must be relative")):
        reply = train(config, name)
        assert reply.has_error() and why in reply.error.reason, (name, reply.error.reason)


def test_the_operators_side_resolves_from_the_working_directory(tmp_path):
    assert scheme_file("models/m.onnx", "onnx") == Path("models/m.onnx")
    with device_files(None), pytest.raises(ResolveError, match="no models folder"):
        scheme_file("m.onnx", "onnx")
    with device_files(tmp_path):
        assert scheme_file("sub/m.onnx", "onnx") == tmp_path.resolve() / "sub" / "m.onnx"
    assert scheme_file("m.onnx", "onnx") == Path("m.onnx")  # the block ended
