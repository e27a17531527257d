"""Every layer op's gradient, for every input, against central differences in float64 mode."""

import numpy as np
import pytest

from fedcore.engine import (
    avg_pool2d,
    batch_norm,
    conv2d,
    dropout,
    embedding,
    gelu,
    gru,
    layer_norm,
    lstm,
    max_pool2d,
    sigmoid,
    softmax,
    tanh,
)

from .gradcheck64 import check_grads64

rng = np.random.default_rng(7)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


@pytest.mark.parametrize("xshape, kernel, stride, padding", [
    ((2, 5, 6, 3), 3, 1, 1),
    ((2, 5, 6, 3), 3, 2, 1),
    ((1, 7, 6, 2), (3, 2), (2, 1), (0, 1)),
    ((2, 4, 4, 2), 1, 1, 0),
    ((1, 6, 6, 1), 3, 2, 0),  # the last row/column is never read
    ((1, 3, 3, 2), 2, 1, 2),  # padding larger than half the kernel
    ((1, 4, 4, 8), 3, 1, 1),  # 72 columns: the bias is added after the GEMM, not folded in
])
def test_conv2d(xshape, kernel, stride, padding):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = randn(kh, kw, xshape[3], 4)
    check_grads64(lambda x, w, b: conv2d(x, w, b, stride=stride, padding=padding),
                  [randn(*xshape), w, randn(4)])


def test_conv2d_without_bias():
    check_grads64(lambda x, w: conv2d(x, w, padding=1), [randn(2, 4, 4, 2), randn(3, 3, 2, 3)])


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize("kernel, stride, padding, hw", [
    (2, None, 0, (4, 6)),  # windows tile the input exactly
    (2, None, 0, (5, 5)),  # a leftover row and column get no gradient
    (3, 2, 1, (5, 5)),  # overlapping windows with padding
    ((2, 3), (1, 2), 0, (4, 7)),
])
def test_pooling(pool, kernel, stride, padding, hw):
    check_grads64(lambda x: pool(x, kernel, stride, padding), [randn(2, *hw, 3)])


@pytest.mark.parametrize("op", [tanh, sigmoid, gelu])
def test_activations(op):
    check_grads64(op, [randn(3, 4) * 2])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis):
    check_grads64(lambda x: softmax(x, axis=axis), [randn(3, 4, 2) * 2])


def test_dropout_gradient_uses_the_forward_mask():
    # the same seed for every evaluation makes the mask a constant of the function
    check_grads64(lambda x: dropout(x, 0.4, rng=np.random.default_rng(3)), [randn(5, 6)])


def test_embedding_with_repeated_ids():
    ids = np.array([[1, 2, 1], [0, 4, 1]])
    check_grads64(lambda w: embedding(ids, w), [randn(6, 3)])  # row 5 unused, row 1 thrice


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 2, 4)])
def test_batch_norm_training(shape, relu):
    check_grads64(lambda x, g, b: batch_norm(x, g, b, relu=relu),
                  [randn(*shape), randn(4), randn(4)])


def test_batch_norm_eval_uses_given_statistics():
    from fedcore.engine import Tensor, float64_mode

    with float64_mode():
        running = Tensor(np.stack([randn(4), np.abs(randn(4)) + 0.5]))
    check_grads64(lambda x, g, b: batch_norm(x, g, b, running, training=False),
                  [randn(5, 4), randn(4), randn(4)])


def test_layer_norm():
    check_grads64(lambda x, g, b: layer_norm(x, g, b), [randn(3, 2, 5), randn(5), randn(5)])


@pytest.mark.parametrize("t", [4, 12])  # 12 steps: three chunks of weight gradients (>1 thread)
def test_lstm_all_inputs(t):
    b, e, h = 2, 3, 5
    check_grads64(lambda x, h0, c0, wi, wh, bias: lstm(x, wi, wh, bias, h0, c0),
                  [randn(b, t, e), randn(b, h), randn(b, h), randn(e, 4 * h) * 0.5,
                   randn(h, 4 * h) * 0.5, randn(4 * h)])


def test_lstm_zero_state():
    check_grads64(lambda x, wi, wh, bias: lstm(x, wi, wh, bias),
                  [randn(3, 3, 2), randn(2, 8) * 0.5, randn(2, 8) * 0.5, randn(8)])


@pytest.mark.parametrize("t", [4, 12])
def test_gru_all_inputs(t):
    b, e, h = 2, 3, 5
    check_grads64(lambda x, h0, wi, wh, bi, bh: gru(x, wi, wh, bi, bh, h0),
                  [randn(b, t, e), randn(b, h), randn(e, 3 * h) * 0.5, randn(h, 3 * h) * 0.5,
                   randn(3 * h), randn(3 * h)])


def test_composed_conv_net():
    """conv -> pool -> gelu -> layer_norm -> softmax: the ops compose under backprop."""
    def net(x, w, b, g, beta):
        y = gelu(max_pool2d(conv2d(x, w, b, padding=1), 2))
        return softmax(layer_norm(y, g, beta))

    check_grads64(net, [randn(2, 4, 4, 2), randn(3, 3, 2, 3), randn(3), randn(3), randn(3)])
