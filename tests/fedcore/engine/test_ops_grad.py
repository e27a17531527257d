"""Every differentiable op against central finite differences."""

import numpy as np
import pytest

from fedcore.engine import (
    Tensor,
    add,
    add_,
    flatten,
    linear,
    log_softmax,
    matmul,
    mean,
    mse,
    mul,
    mul_,
    neg,
    relu,
    relu_,
    reshape,
    softmax_cross_entropy,
    sub,
    sum,
)
from fedcore.nn import Dense, ReLU, Sequential

from .gradcheck import check_grads

rng = np.random.default_rng(42)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def away_from_zero(*shape: int) -> np.ndarray:
    """Values with |x| >= 0.2 so finite differences never straddle ReLU's kink."""
    x = randn(*shape)
    return np.where(x >= 0, x + 0.2, x - 0.2).astype(np.float32)


def test_matmul():
    check_grads(matmul, [randn(3, 4), randn(4, 5)])


def test_linear():
    check_grads(linear, [randn(3, 4), randn(4, 5), randn(5)])


def test_linear_takes_leading_axes_as_rows():
    check_grads(linear, [randn(2, 3, 2, 4), randn(4, 5), randn(5)])
    x, w, b = randn(2, 3, 4), randn(4, 5), randn(5)
    np.testing.assert_allclose(linear(x, w, b).data, x @ w + b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2-D"):
        linear(randn(4), w, b)


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [((3, 4), (3, 4)), ((3, 4), (4,)), ((3, 4), (3, 1)), ((3, 1), (1, 4)), ((2, 3), ())],
)
@pytest.mark.parametrize("op", [add, sub, mul])
def test_binary_broadcasting(op, shape_a, shape_b):
    check_grads(op, [randn(*shape_a), randn(*shape_b)])


def test_neg():
    check_grads(neg, [randn(3, 4)])


def test_relu():
    check_grads(relu, [away_from_zero(4, 5)])


def test_reshape_and_flatten():
    check_grads(lambda x: reshape(x, 6, 4), [randn(2, 3, 4)])
    check_grads(lambda x: reshape(x, (4, -1)), [randn(2, 3, 4)])
    check_grads(flatten, [randn(2, 3, 4)])


@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (1, True), ((0, 2), False),
                                            (-1, False)])
@pytest.mark.parametrize("op", [sum, mean])
def test_reductions(op, axis, keepdims):
    check_grads(lambda x: op(x, axis=axis, keepdims=keepdims), [randn(2, 3, 4)])


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax(axis):
    check_grads(lambda x: log_softmax(x, axis=axis), [randn(4, 5) * 3])


def test_softmax_cross_entropy():
    labels = np.array([0, 3, 2, 3, 1])
    check_grads(lambda z: softmax_cross_entropy(z, labels), [randn(5, 4) * 2])


def test_softmax_cross_entropy_is_stable_and_correct():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    loss = softmax_cross_entropy(Tensor(logits), np.array([0, 2])).item()
    assert np.isfinite(loss)
    assert loss == pytest.approx(np.log(3.0) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="labels must lie in"):
        softmax_cross_entropy(Tensor(logits), np.array([0, 3]))


def test_mse():
    check_grads(mse, [randn(4, 3), randn(4, 3)])
    val = mse(Tensor(np.ones((2, 2))), Tensor(np.zeros((2, 2)))).item()
    assert val == pytest.approx(1.0)


def test_add_inplace():
    def f(a, b):
        y = a * 2.0
        return add_(y, b)

    check_grads(f, [randn(3, 4), randn(4)])


def test_mul_inplace_both_args():
    def f(a, b):
        y = a + 0.0
        return mul_(y, b)

    check_grads(f, [randn(3, 4), randn(3, 4)])


def test_relu_inplace():
    def f(a, b):
        return relu_(a + b)  # add saves nothing, so overwriting its output is legal

    small = np.clip(randn(3, 4) * 0.05, -0.09, 0.09)  # keeps a + b away from the kink
    check_grads(f, [away_from_zero(3, 4), small])


def test_fan_out_accumulates():
    # x is used three times: d/dx (x*x + x) = 2x + 1
    check_grads(lambda x: x * x + x, [randn(3, 3)])
    x = Tensor(randn(3), requires_grad=True)
    sum(x * x + x).backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1, rtol=1e-6)


def test_gradient_accumulates_across_backwards():
    x = Tensor(randn(4), requires_grad=True)
    sum(x * 3.0).backward()
    sum(x * 3.0).backward()
    np.testing.assert_allclose(x.grad, np.full(4, 6.0))


def test_mlp_parameters_against_finite_differences():
    model = Sequential(Dense(5, 7, seed=1), ReLU(), Dense(7, 3, seed=2))
    model.flatten_parameters()
    x, labels = randn(6, 5), np.array([0, 1, 2, 0, 1, 2])
    loss = softmax_cross_entropy(model(x), labels)
    loss.backward()
    analytic = model.grad_flat().copy()
    base = model.get_flat()
    numeric = np.zeros_like(base, dtype=np.float64)
    eps = 1e-3  # small: a ReLU pre-activation must not cross zero within +-eps
    for j in range(base.size):
        vals = []
        for sign in (1, -1):
            v = base.copy()
            v[j] += sign * eps
            model.set_flat(v)
            vals.append(float(softmax_cross_entropy(model(x), labels).item()))
        numeric[j] = (vals[0] - vals[1]) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-3)
