"""Bad input to the layer ops: errors name the op and the shapes involved."""

import re

import numpy as np
import pytest

from fedcore.engine import (
    Tensor,
    batch_norm,
    batch_norm_train,
    conv2d,
    dropout,
    embedding,
    float64_mode,
    gru,
    layer_norm,
    lstm,
    max_pool2d,
    running_moments_update_,
)


def z(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def test_conv2d_channel_mismatch_names_both_shapes():
    with raises(ValueError, "conv2d: input (32, 28, 28, 3) has 3 channels but weight "
                            "(3, 3, 1, 8) expects 1"):
        conv2d(z(32, 28, 28, 3), z(3, 3, 1, 8))


def test_conv2d_shapes():
    with raises(ValueError, "conv2d: input must be 4-D (N, H, W, C), got shape (28, 28)"):
        conv2d(z(28, 28), z(3, 3, 1, 8))
    with raises(ValueError, "conv2d: bias (4,) does not match weight (3, 3, 1, 8)"):
        conv2d(z(1, 5, 5, 1), z(3, 3, 1, 8), z(4))
    with raises(ValueError, "conv2d: input (1, 2, 2, 1) is smaller than the (3, 3) window"):
        conv2d(z(1, 2, 2, 1), z(3, 3, 1, 8))
    with raises(ValueError, "conv2d: stride must be an int or a pair of ints"):
        conv2d(z(1, 5, 5, 1), z(3, 3, 1, 8), stride=(1, 2, 3))


def test_dtype_mismatch_names_op_shapes_and_dtypes():
    x = Tensor(z(2, 5, 5, 1))
    with float64_mode():
        w = Tensor(z(3, 3, 1, 2))
    with raises(TypeError, "conv2d: dtype mismatch: input (2, 5, 5, 1) float32, weight "
                           "(3, 3, 1, 2) float64"):
        conv2d(x, w)
    with raises(TypeError, "max_pool2d: input (2, 4, 4, 1) must be a float array, got int64"):
        max_pool2d(np.zeros((2, 4, 4, 1), np.int64))


def test_pool_errors():
    with raises(ValueError, "max_pool2d: input must be 4-D (N, H, W, C), got shape (4, 4)"):
        max_pool2d(z(4, 4))
    with raises(ValueError, "max_pool2d: padding (2, 2) must be at most half the kernel"):
        max_pool2d(z(1, 4, 4, 1), 2, padding=2)


def test_embedding_errors():
    with raises(TypeError, "embedding: indices (2, 3) must be integers, got float32"):
        embedding(z(2, 3), z(10, 4))
    with raises(IndexError, "embedding: indices (2,) must lie in [0, 10) for weight (10, 4), "
                            "got range [3, 12]"):
        embedding(np.array([3, 12]), z(10, 4))


def test_norm_errors():
    with raises(ValueError, "batch_norm: gamma (3,) does not match input (8, 4) (4 features)"):
        batch_norm(z(8, 4), z(3), z(4))
    with raises(ValueError, "batch_moments: need more than one value per feature"):
        batch_norm(z(1, 4), z(4), z(4))
    with raises(ValueError, "layer_norm: beta (5,) does not match input (2, 4)"):
        layer_norm(z(2, 4), z(4), z(5))
    with raises(ValueError, "batch_norm: evaluation mode needs running statistics"):
        batch_norm(z(8, 4), z(4), z(4), training=False)
    with raises(ValueError, "batch_norm: statistics (3, 4) must be (2, 4) [mean, var] or "
                "(2 + 8, 4) [mean, var, x - mean] for input (8, 4)"):
        batch_norm_train(z(8, 4), z(3, 4), z(4), z(4))
    with raises(ValueError, "running_moments_update_: running (2, 4) vs batch (1, 4)"):
        running_moments_update_(Tensor(z(2, 4)), z(1, 4), 0.1, 8)


def test_rnn_errors():
    with raises(ValueError, "lstm: input (2, 5, 3) has 3 features but w_ih (4, 32) expects "
                            "(3, 32) for hidden size 8"):
        lstm(z(2, 5, 3), z(4, 32), z(8, 32), z(32))
    with raises(ValueError, "lstm: input must be 3-D (batch, time, features), got shape (5, 3)"):
        lstm(z(5, 3), z(3, 32), z(8, 32), z(32))
    with raises(ValueError, "lstm: h0 (3, 8) must be (batch, hidden) = (2, 8) for input "
                            "(2, 5, 3)"):
        lstm(z(2, 5, 3), z(3, 32), z(8, 32), z(32), h0=z(3, 8))
    with raises(ValueError, "gru: w_hh (8, 32) must be (hidden, 3 * hidden)"):
        gru(z(2, 5, 3), z(3, 24), z(8, 32), z(24), z(24))
    with raises(ValueError, "gru: b_hh (8,) must be (24,) for w_hh (8, 24)"):
        gru(z(2, 5, 3), z(3, 24), z(8, 24), z(24), z(8))


def test_dropout_probability():
    with raises(ValueError, "dropout: p must be in [0, 1), got 1.0"):
        dropout(z(3), 1.0)
