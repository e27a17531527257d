"""Mutation detection, grad mode and graph bookkeeping."""

import numpy as np
import pytest

from fedcore.engine import (
    MutationError,
    Tensor,
    add_,
    enable_grad,
    is_grad_enabled,
    matmul,
    mul,
    mul_,
    no_grad,
    relu,
    relu_,
    softmax_cross_entropy,
    sum,
)
from fedcore.models import mlp
from fedcore.optim import SGD

rng = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def test_mutating_a_saved_input_raises_naming_op_and_var():
    a = Tensor(randn(3), requires_grad=True, name="a")
    x = Tensor(randn(3), name="x")
    y = mul(a, x)  # mul saves x to compute d/da
    add_(x, 1.0)  # x is not recorded, but its version moves
    with pytest.raises(MutationError) as err:
        sum(y).backward()
    msg = str(err.value)
    assert "'mul'" in msg and "'x#" in msg and "add_" in msg
    assert err.value.op == "mul" and err.value.var_name.startswith("x")
    assert a.grad is None  # nothing silently accumulated


def test_mutating_a_saved_output_raises():
    w = Tensor(randn(4, 3), requires_grad=True)
    h = relu(matmul(Tensor(randn(2, 4)), w))  # relu saves its output
    mul_(h, 2.0)
    with pytest.raises(MutationError, match="'relu'"):
        sum(h).backward()


@pytest.mark.parametrize("mutate", [
    lambda t: add_(t, 1.0), lambda t: mul_(t, 0.5), lambda t: relu_(t),
])
def test_every_inplace_op_invalidates_saved_values(mutate):
    a = Tensor(randn(2, 2), requires_grad=True)
    x = Tensor(randn(2, 2), name="x")
    y = matmul(a, x)
    v = x.version
    mutate(x)
    assert x.version == v + 1
    with pytest.raises(MutationError, match="'matmul'.*'x#"):
        sum(y).backward()


def test_optimizer_step_before_backward_raises_naming_the_weight():
    model = mlp(4, 3, hidden=(5,))
    opt = SGD(model.parameters(), lr=0.1)
    loss = softmax_cross_entropy(model(randn(6, 4)), np.array([0, 1, 2, 0, 1, 2]))
    opt.step()  # params written after the forward saved them
    with pytest.raises(MutationError, match="'linear'.*weight"):
        loss.backward()


def test_set_flat_between_forward_and_backward_raises():
    model = mlp(4, 3, hidden=(5,))
    loss = softmax_cross_entropy(model(randn(2, 4)), np.array([0, 1]))
    model.set_flat(model.get_flat())
    with pytest.raises(MutationError):
        loss.backward()


def test_inplace_on_unsaved_value_is_legal_and_correct():
    a = Tensor(randn(3, 3), requires_grad=True)
    b = Tensor(randn(3, 3))
    y = a + b  # add saves nothing, so overwriting y is safe
    relu_(y)
    sum(y).backward()
    np.testing.assert_allclose(a.grad, (a.data + b.data > 0).astype(np.float32))


def test_inplace_on_leaf_requiring_grad_is_rejected_unless_no_grad():
    w = Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        add_(w, 1.0)
    before = w.data.copy()
    with no_grad():
        add_(w, 1.0)
    np.testing.assert_allclose(w.data, before + 1)


def test_no_grad_records_nothing_and_nests():
    w = Tensor(randn(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = w * 2.0
        with enable_grad():
            z = w * 2.0
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not y.requires_grad and z.requires_grad

    @no_grad()
    def f() -> Tensor:
        return w * 3.0

    assert not f().requires_grad


def test_backward_twice_raises():
    w = Tensor(randn(3), requires_grad=True)
    y = sum(w * w)
    y.backward()
    with pytest.raises(RuntimeError, match="twice"):
        y.backward()


def test_backward_needs_scalar_or_grad():
    w = Tensor(randn(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar"):
        (w * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(randn(3)).backward(np.ones(3))


def test_tensor_dtypes_and_grad_setter():
    assert Tensor(np.ones(3, np.float64)).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.int64
    with pytest.raises(ValueError, match="float32"):
        Tensor([1, 2], requires_grad=True)
    w = Tensor(np.zeros(2), requires_grad=True)
    w.grad = np.ones(2)
    assert w.grad.dtype == np.float32 and w.is_leaf
    with pytest.raises(ValueError, match="shape"):
        w.grad = np.ones(3)
    assert (w * 2.0).grad_fn == "mul"


def test_graph_frees_saved_buffers_after_backward(engine):
    w = Tensor(randn(64, 64), requires_grad=True)
    x = Tensor(randn(32, 64))
    loss = sum(relu(matmul(x, w)))
    # the graph keeps only what backward needs: relu's output (it saves that) and the loss;
    # matmul's output is not saved by anyone and is already gone
    assert engine.pool.live_bytes == 32 * 64 * 4 + 4
    loss.backward()
    del loss
    assert engine.pool.live_bytes == w.grad.nbytes  # only the accumulated gradient is left


def _mlp_grads(model: object, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    softmax_cross_entropy(model(x), y).backward()
    return model.grad_flat().copy()


def test_gradients_stored_after_zero_grad_still_accumulate_otherwise():
    """After zero_grad backward may store weight gradients instead of adding them to zeros;
    without zero_grad, or after a direct write through .grad, it must still add."""
    x, y = randn(8, 6), rng.integers(0, 3, 8)
    model = mlp(6, 3, hidden=(5,), seed=1)
    opt = SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    once = _mlp_grads(model, x, y)
    twice = _mlp_grads(model, x, y)  # no zero_grad: accumulates
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6)
    model.zero_grad()
    np.testing.assert_array_equal(_mlp_grads(model, x, y), once)
    opt.zero_grad()
    w = model.parameters()[0]
    w.grad[...] = 1.0  # written outside the engine: backward must add to it
    g = _mlp_grads(model, x, y)
    np.testing.assert_allclose(g[:w.size], once[:w.size] + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(g[w.size:], once[w.size:])
