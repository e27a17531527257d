"""ONNX export: every exported file runs in onnxruntime and matches the engine's forward."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fedcore.engine import Tensor, no_grad  # noqa: E402
from fedcore.export import MIN_OPSET, export_onnx, supported_layers, to_onnx  # noqa: E402
from fedcore.models import build_model  # noqa: E402
from fedcore.nn import (  # noqa: E402
    GELU,
    GRU,
    LSTM,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2d,
    Module,
    ReLU,
    Reshape,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)

TOL = {"rtol": 1e-4, "atol": 1e-5}


def randomize(model: Module, seed: int, scale: float = 0.3) -> None:
    """Random weights through the flat vector (biases too, so none of them is trivially 0)."""
    rng = np.random.default_rng(seed)
    model.set_flat(rng.normal(0.0, scale, model.layout.size).astype(np.float32))


def engine_out(model: Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with no_grad():
        return model(x).numpy()


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def check(model: Module, path: Path, inputs: list[np.ndarray]) -> None:
    for x in inputs:
        np.testing.assert_allclose(run_onnx(path, x), engine_out(model, x), **TOL)


def floats(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


# -- the reference models ------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs, sample", [
    ("mlp", {"input_dim": 20, "num_classes": 5, "hidden": [16, 8]}, (20,)),
    ("logreg", {"input_dim": 12, "num_classes": 3}, (12,)),
    ("cnn", {"num_classes": 10}, (784,)),  # 28x28x1, flat pixels reshaped inside
    ("cnn", {"num_classes": 10, "input_shape": (28, 28, 1)}, (28, 28, 1)),
    ("cnn", {"num_classes": 10, "input_dim": 64, "channels": (4, 6), "hidden": 16}, (64,)),
    ("cnn", {"num_classes": 4, "input_shape": (8, 8, 1), "channels": (3, 5)}, (8, 8, 1)),
])
def test_reference_models_match_engine(tmp_path: Path, name: str, kwargs: dict,
                                       sample: tuple[int, ...]) -> None:
    model = build_model(name, **kwargs)
    randomize(model, seed=1, scale=0.1)
    path = export_onnx(model, tmp_path / f"{name}.onnx", sample)
    assert path.is_file()
    rng = np.random.default_rng(2)
    check(model, path, [floats(rng, 1, *sample), floats(rng, 7, *sample)])


def test_lstm_language_model_matches_engine(tmp_path: Path) -> None:
    model = build_model("lstm", vocab_size=30, embed_dim=8, hidden=12, seed=3)
    randomize(model, seed=4, scale=0.5)
    path = export_onnx(model, tmp_path / "lm.onnx", (6,))
    rng = np.random.default_rng(5)
    # two batch sizes and, the time axis being dynamic, two sequence lengths
    inputs = [rng.integers(0, 30, size=shape) for shape in [(1, 6), (4, 6), (3, 11)]]
    check(model, path, inputs)
    assert run_onnx(path, inputs[2]).shape == (33, 30)  # (B*T, vocab), batch-major rows


def test_export_from_example_batch_and_dynamic_axes(tmp_path: Path) -> None:
    model = build_model("lstm", vocab_size=10, embed_dim=4, hidden=5)
    path = export_onnx(model, tmp_path / "sub" / "lm.onnx", np.zeros((2, 3), np.int32))
    proto = onnx.load(str(path))
    (inp,) = proto.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_param for d in dims] == ["batch", "seq"]
    ids = np.random.default_rng(0).integers(0, 10, size=(5, 4))
    check(model, path, [ids])

    cnn = build_model("cnn", input_shape=(8, 8), channels=(2, 3), hidden=4)
    proto = to_onnx(cnn, Tensor(np.zeros((3, 8, 8, 1), np.float32)))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [8, 8, 1]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    # the engine's NHWC layout: one transpose in, one out for the whole conv/pool/ReLU stack
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Transpose") == 2 and ops.count("Conv") == 2


# -- every other layer ---------------------------------------------------------------------------
def test_layer_zoo_matches_engine(tmp_path: Path) -> None:
    bn_nhwc, bn_nchw, bn_flat = BatchNorm(2), BatchNorm(3, eps=0.1), BatchNorm(8)
    model = Sequential(
        Reshape(6, 6, 2), bn_nhwc,                                # BN on channels-last
        Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), seed=0), bn_nchw,  # BN on NCHW
        AvgPool2d(2, stride=1, padding=1), Tanh(),                # (4, 6, 3), padding counted
        MaxPool2d(3, stride=2, padding=1), GELU(),                # (2, 3, 3), -inf padding
        Conv2d(3, 2, 1, bias=False, seed=4),                      # (2, 3, 2)
        Flatten(), Dense(12, 8, seed=1), bn_flat, ReLU(inplace=True), LayerNorm(8), Sigmoid(),
        Dropout(0.5), Dense(8, 5, bias=False, seed=2), Softmax(),
    )
    randomize(model, seed=6, scale=1.0)
    rng = np.random.default_rng(7)
    for bn in (bn_nhwc, bn_nchw, bn_flat):
        c = bn.num_features
        np.copyto(bn.running.data, np.stack([rng.normal(size=c), rng.uniform(0.5, 2.0, c)]))
    path = export_onnx(model, tmp_path / "zoo.onnx", (72,))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Transpose") == 2  # NCHW from the first conv through to Flatten
    check(model, path, [floats(rng, 1, 72), floats(rng, 9, 72)])


@pytest.mark.parametrize("act", [GELU, Tanh, Sigmoid, ReLU, Softmax], ids=lambda a: a.__name__)
def test_activation_on_a_wide_range(tmp_path: Path, act: type[Module]) -> None:
    model = Sequential(Dense(4, 16, seed=0), act())
    path = export_onnx(model, tmp_path / "act.onnx", (4,))
    x = np.random.default_rng(10).normal(0.0, 3.0, (8, 4)).astype(np.float32)
    check(model, path, [x])


def test_recurrent_stack_matches_engine(tmp_path: Path) -> None:
    model = Sequential(GRU(4, 6, seed=0), Tanh(), LSTM(6, 3, seed=1), Reshape(3),
                       Dense(3, 2, seed=2))  # (B*T, 2) rows
    randomize(model, seed=8, scale=0.6)
    path = export_onnx(model, tmp_path / "rnn.onnx", (5, 4))
    rng = np.random.default_rng(9)
    check(model, path, [floats(rng, 1, 5, 4), floats(rng, 6, 5, 4), floats(rng, 2, 9, 4)])


def test_embedding_then_dense(tmp_path: Path) -> None:
    model = Sequential(Embedding(11, 4, seed=0), Flatten(), Dense(12, 3, seed=1))
    path = export_onnx(model, tmp_path / "emb.onnx", (3,))
    ids = np.random.default_rng(1).integers(0, 11, size=(5, 3))
    check(model, path, [ids, ids[:1]])


def test_export_leaves_model_untouched(tmp_path: Path) -> None:
    model = build_model("mlp", input_dim=4, num_classes=2)
    before = model.get_flat()
    export_onnx(model, tmp_path / "m.onnx", (4,))
    assert model.training
    np.testing.assert_array_equal(model.get_flat(), before)


# -- errors ----------------------------------------------------------------------------------------
class Custom(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class MyDense(Dense):
    pass


def test_unsupported_layer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported layer Custom at '1'.*supported: .*Dense"):
        export_onnx(Sequential(Dense(3, 2), Custom()), tmp_path / "x.onnx", (3,))
    with pytest.raises(ValueError, match="unsupported layer MyDense"):  # subclasses: no guess
        export_onnx(MyDense(3, 2), tmp_path / "x.onnx", (3,))
    assert not (tmp_path / "x.onnx").exists()
    assert {"Conv2d", "LSTM", "LanguageModel", "Sequential"} <= set(supported_layers())


def test_bad_shapes_and_options(tmp_path: Path) -> None:
    mlp = build_model("mlp", input_dim=6, num_classes=2)
    with pytest.raises(ValueError, match=r"Dense expects 6 features.*\(batch, 5\)"):
        to_onnx(mlp, (5,))
    with pytest.raises(ValueError, match=r"Dense expects a \(batch, 3\) input"):
        to_onnx(Sequential(LSTM(2, 3), Dense(3, 1)), (4, 2))
    with pytest.raises(ValueError, match="Conv2d expects an \\(N, H, W, C\\)"):
        to_onnx(Sequential(Conv2d(1, 2, 3)), (8, 8))
    with pytest.raises(ValueError, match="Reshape"):
        to_onnx(build_model("cnn"), (100,))
    with pytest.raises(ValueError, match="Embedding needs integer ids"):
        to_onnx(Sequential(Embedding(5, 2)), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="opset must be in"):
        to_onnx(mlp, (6,), opset=MIN_OPSET - 1)
    with pytest.raises(ValueError, match="LayerNorm needs opset >= 17"):
        to_onnx(Sequential(LayerNorm(6)), (6,), opset=16)
    with pytest.raises(TypeError, match="sequence of ints"):
        to_onnx(mlp, 6)  # type: ignore[arg-type]
    assert to_onnx(mlp, (6,), opset=MIN_OPSET).opset_import[0].version == MIN_OPSET


def test_fedcore_imports_without_onnx() -> None:
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import fedcore, fedcore.models, fedcore.export\n"
            "from fedcore.models import build_model\n"
            "try:\n"
            "    fedcore.export.to_onnx(build_model('logreg', input_dim=2, num_classes=2), (2,))\n"
            "except ImportError as e:\n"
            "    assert 'fedcore[export]' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('no ImportError')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
