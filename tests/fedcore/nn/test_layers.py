"""The layers in fedcore.nn: parameter gradients (float64), flat vectors, dropout, batch norm."""

import numpy as np
import pytest

from fedcore.engine import Tensor, float64_mode, softmax_cross_entropy, sum
from fedcore.nn import (
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
    get_state,
    named_buffers,
    set_state,
    state_size,
)
from fedcore.optim import SGD

from ..engine.gradcheck64 import numeric_grad

rng = np.random.default_rng(5)


def check_module_grads64(build, x: np.ndarray, eps: float = 1e-6) -> None:
    """Every parameter's gradient of sum(module(x) * R) against central differences."""
    with float64_mode():
        module = build()
        xin = x if x.dtype.kind in "iu" else x.astype(np.float64)
        out = module(xin)
        proj = np.random.default_rng(0).standard_normal(out.shape)
        out.backward(proj)
        for name, p in module.named_parameters():
            assert p.dtype == np.float64, name
            data = p.data  # perturbed in place: no graph is recorded for these evaluations

            def value(_arrays: list, data: np.ndarray = data) -> float:
                return float(np.sum(module(xin).data * proj))

            numeric = numeric_grad(value, [data], 0, eps)
            np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("build, x", [
    (lambda: Conv2d(2, 3, 3, stride=2, padding=1, seed=0), rng.standard_normal((2, 5, 5, 2))),
    (lambda: Sequential(Conv2d(1, 2, 3, padding=1, seed=1), MaxPool2d(2), Tanh(),
                        AvgPool2d(2), Flatten(), Dense(2, 3, seed=2), Sigmoid()),
     rng.standard_normal((2, 4, 4, 1))),
    (lambda: Sequential(BatchNorm(3), GELU()), rng.standard_normal((4, 2, 2, 3))),
    (lambda: Sequential(LayerNorm(4), Softmax()), rng.standard_normal((3, 2, 4))),
    (lambda: Embedding(6, 3, seed=3), np.array([[0, 5, 5], [2, 0, 1]])),
    (lambda: LSTM(3, 4, seed=4), rng.standard_normal((2, 3, 3))),
    (lambda: GRU(3, 4, seed=5), rng.standard_normal((2, 3, 3))),
])
def test_layer_parameter_gradients(build, x):
    check_module_grads64(build, x)


def test_new_layers_live_in_the_flat_vector():
    model = Sequential(Reshape(6, 6, 1), Conv2d(1, 2, 3, seed=0), BatchNorm(2), ReLU(),
                       MaxPool2d(2), Flatten(), Dense(8, 3, seed=1))
    model.flatten_parameters()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["1.weight", "1.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    root = model.parameters()[0].var.root
    assert all(p.var.root is root for p in model.parameters())
    assert model.layout.size == 3 * 3 * 2 + 2 + 2 + 2 + 8 * 3 + 3
    new = np.arange(model.layout.size, dtype=np.float32)
    model.set_flat(new)
    np.testing.assert_array_equal(model[1].weight.data.ravel(), new[:18])
    assert model(rng.standard_normal((4, 36)).astype(np.float32)).shape == (4, 3)


def test_dropout_statistics_and_eval_identity():
    x = np.ones((200, 500), np.float32)
    layer = Dropout(0.3, seed=1)
    y = layer(x).data
    assert abs((y == 0).mean() - 0.3) < 0.01
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.7)}
    assert abs(y.mean() - 1.0) < 0.02  # inverted scaling keeps the expectation
    assert not np.array_equal(layer(x).data, y)  # the generator advances
    np.testing.assert_array_equal(Dropout(0.3, seed=1)(x).data, y)  # seeded: reproducible
    layer.eval()
    t = Tensor(x)
    assert layer(t) is t  # identity, no copy, no op
    assert Dropout(0.0)(t) is t


def test_batch_norm_train_and_eval():
    bn = BatchNorm(3, momentum=0.1)
    bn.flatten_parameters()
    x = (rng.standard_normal((8, 4, 4, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5])
    x = x.astype(np.float32)
    y = bn(x).data.reshape(-1, 3)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(0), 1.0, rtol=1e-3)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(bn.running_mean, 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    running = bn.running.data.copy()
    bn.eval()
    out = bn(x).data
    expect = (x - running[0]) / np.sqrt(running[1] + bn.eps)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bn.running.data, running)  # eval does not update them
    single = bn(x[:1, :1, :1]).data  # eval works on any batch, even one value per channel
    assert single.shape == (1, 1, 1, 3)


def test_batch_norm_statistics_travel_in_the_state_not_the_flat_vector():
    model = Sequential(Dense(4, 3, seed=0), BatchNorm(3))
    model.flatten_parameters()
    assert [n for n, _ in named_buffers(model)] == ["1.running"]
    assert model.layout.size == 4 * 3 + 3 + 3 + 3
    assert state_size(model) == model.layout.size + 6
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    for _ in range(3):  # training updates the running stats; backward still works
        opt.zero_grad()
        loss = softmax_cross_entropy(model(x), np.arange(16) % 3)
        loss.backward()
        opt.step()
    state = get_state(model)
    np.testing.assert_array_equal(state[:model.layout.size], model.get_flat())
    np.testing.assert_array_equal(state[model.layout.size:], model[1].running.data.ravel())
    other = Sequential(Dense(4, 3, seed=9), BatchNorm(3))
    set_state(other, state)
    np.testing.assert_array_equal(get_state(other), state)
    model.eval()
    other.eval()
    np.testing.assert_array_equal(model(x).data, other(x).data)
    with pytest.raises(ValueError, match="set_state expects a 1-D float32 vector of 27"):
        set_state(other, state[:-1])


def test_lstm_layer_state_carries_over():
    layer = LSTM(3, 4, seed=0)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    full = layer(x).data
    first = layer(x[:, :4]).data
    h, c = layer.last_state
    second = layer(x[:, 4:], h, c).data  # truncated BPTT: continue from the carried state
    np.testing.assert_allclose(np.concatenate([first, second], 1), full, rtol=1e-5, atol=1e-6)
    gru_layer = GRU(3, 4, seed=0)
    out = gru_layer(x)
    np.testing.assert_allclose(gru_layer.last_state[0], out.data[:, -1])


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="Conv2d channels"):
        Conv2d(0, 3, 3)
    with pytest.raises(ValueError, match="Dropout p"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="BatchNorm momentum"):
        BatchNorm(3, momentum=2.0)
    with pytest.raises(ValueError, match="LSTM sizes"):
        LSTM(0, 3)


def test_reprs_and_sum_of_outputs():
    model = Sequential(Conv2d(1, 2, 3, padding=1), MaxPool2d(2), Dropout(0.1), LayerNorm(2))
    text = repr(model)
    assert "Conv2d(1, 2, kernel_size=(3, 3)" in text and "Dropout(p=0.1)" in text
    assert isinstance(model, Module)
    assert sum(model(np.ones((1, 4, 4, 1), np.float32))).shape == ()
