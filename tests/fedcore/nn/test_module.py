"""Modules, layers and flat parameter vectors."""

import copy
import pickle

import numpy as np
import pytest

from fedcore.engine import Tensor, softmax_cross_entropy
from fedcore.nn import Dense, Flatten, Module, Parameter, ReLU, Sequential
from fedcore.optim import SGD


def small_model() -> Sequential:
    model = Sequential(Dense(4, 3, seed=0), ReLU(), Dense(3, 2, init="glorot", seed=1))
    model.flatten_parameters()
    return model


def test_named_parameters_and_layout():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model.num_parameters() == 4 * 3 + 3 + 3 * 2 + 2 == model.layout.size
    assert model.layout.offsets == (0, 12, 15, 21)
    assert model.layout.slices()["2.weight"] == slice(15, 21)
    assert model[0].weight.var.name == "0.weight"


def test_parameters_are_views_of_one_buffer():
    model = small_model()
    params = model.parameters()
    root = params[0].var.root
    assert all(p.var.root is root for p in params)
    for p in params:
        assert np.shares_memory(p.data, root.data)


def test_get_flat_is_a_float32_copy_and_set_flat_round_trips():
    model = small_model()
    flat = model.get_flat()
    assert flat.dtype == np.float32 and flat.ndim == 1 and flat.size == model.num_parameters()
    flat[:] = 7.0
    assert not np.any(model.get_flat() == 7.0)  # a copy, not a view
    new = np.arange(model.num_parameters(), dtype=np.float32)
    version = model[0].weight.version
    model.set_flat(new)
    np.testing.assert_array_equal(model.get_flat(), new)
    np.testing.assert_array_equal(model[2].weight.data, new[15:21].reshape(3, 2))
    assert model[0].weight.version == version + 1
    readonly = new.copy()
    readonly.flags.writeable = False  # e.g. a view of received message bytes
    model.set_flat(readonly)


@pytest.mark.parametrize("bad, expect", [
    (np.zeros(5, np.float32), "23 elements.*float32 array of shape \\(5,\\)"),
    (np.zeros(23, np.float64), "float64"),
    (np.zeros((23, 1), np.float32), "shape \\(23, 1\\)"),
])
def test_set_flat_rejects_wrong_size_or_dtype(bad, expect):
    model = small_model()
    before = model.get_flat()
    with pytest.raises(ValueError, match=expect):
        model.set_flat(bad)
    np.testing.assert_array_equal(model.get_flat(), before)


def test_flatten_happens_on_demand_and_keeps_values():
    model = Sequential(Dense(3, 2, seed=5))
    w = model[0].weight.data.copy()
    flat = model.get_flat()
    np.testing.assert_array_equal(flat[:6], w.ravel())
    assert model.flatten_parameters() is model.flatten_parameters()


def test_grad_flat_matches_parameter_grads_and_zero_grad():
    model = small_model()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    softmax_cross_entropy(model(x), np.array([0, 1, 0, 1, 1])).backward()
    g = model.grad_flat()
    np.testing.assert_array_equal(g, np.concatenate([p.grad.ravel()
                                                     for p in model.parameters()]))
    assert not g.flags.writeable
    assert np.any(g != 0)
    model.zero_grad()
    assert not np.any(model.grad_flat())


def test_dense_init_is_seeded_and_scaled():
    a, b = Dense(256, 128, seed=3), Dense(256, 128, seed=3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.data.std() == pytest.approx(np.sqrt(2 / 256), rel=0.05)
    g = Dense(256, 128, init="glorot", rng=np.random.default_rng(0))
    assert np.abs(g.weight.data).max() <= np.sqrt(6 / 384)
    assert not np.any(a.bias.data)
    assert Dense(4, 2, bias=False).bias is None
    with pytest.raises(ValueError, match="init"):
        Dense(2, 2, init="zeros")


def test_forward_shapes_and_modes():
    model = Sequential(Flatten(), Dense(12, 4, seed=0), ReLU(inplace=True), Dense(4, 2, seed=1))
    out = model(np.ones((5, 3, 4), np.float32))
    assert out.shape == (5, 2) and isinstance(out, Tensor)
    assert len(model) == 4 and isinstance(model[2], ReLU)
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for m in model)


def test_module_subclass_must_call_init():
    class Broken(Module):
        def __init__(self):
            self.w = Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="super"):
        Broken()
    with pytest.raises(TypeError):
        Sequential(Dense(2, 2), "relu")


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_keep_a_private_flat_buffer(clone):
    model = small_model()
    twin = clone(model)
    np.testing.assert_array_equal(twin.get_flat(), model.get_flat())
    root = twin.parameters()[0].var.root
    assert all(np.shares_memory(p.data, root.data) for p in twin.parameters())
    assert not np.shares_memory(root.data, model.parameters()[0].var.root.data)
    before = model.get_flat()
    opt = SGD(twin.parameters(), lr=0.1)
    softmax_cross_entropy(twin(np.ones((2, 4), np.float32)), np.array([0, 1])).backward()
    assert not np.any(model.grad_flat())  # gradients went to the copy only
    opt.step()
    np.testing.assert_array_equal(model.get_flat(), before)
    assert not np.array_equal(twin.get_flat(), before)
    with pytest.raises(RuntimeError, match="leaf"):
        copy.deepcopy(twin(np.ones((1, 4), np.float32)))


def test_module_without_parameters_has_an_empty_vector():
    model = Sequential(ReLU())
    assert model.get_flat().shape == (0,) and model.num_parameters() == 0
    model.set_flat(np.zeros(0, np.float32))
