"""Conv, pooling, LSTM and GRU outputs against naive loop implementations."""

import numpy as np
import pytest

from fedcore.engine import Tensor, avg_pool2d, conv2d, gru, lstm, max_pool2d

rng = np.random.default_rng(11)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def naive_conv(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    kh, kw, _, cout = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for n in range(x.shape[0]):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, i * sh:i * sh + kh, j * sw:j * sw + kw]
                out[n, i, j] = np.tensordot(patch, w, axes=3) + b
    return out


def naive_pool(x, kernel, stride, padding, reduce, fill):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)),
                constant_values=fill)
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = reduce(xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw], axis=(1, 2))
    return out


@pytest.mark.parametrize("xshape, kshape, stride, padding", [
    ((2, 8, 8, 1), (3, 3), (1, 1), (1, 1)),
    ((3, 9, 7, 3), (3, 3), (2, 2), (1, 1)),
    ((2, 6, 10, 4), (2, 5), (1, 3), (0, 2)),
    ((1, 5, 5, 8), (1, 1), (1, 1), (0, 0)),
])
def test_conv2d_matches_naive_loops(xshape, kshape, stride, padding):
    x, w, b = randn(*xshape), randn(*kshape, xshape[3], 6), randn(6)
    out = conv2d(x, w, b, stride=stride, padding=padding)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, naive_conv(x, w, b, stride, padding), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("kernel, stride, padding", [
    ((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0)),
])
def test_pooling_matches_naive_loops(kernel, stride, padding):
    x = randn(2, 7, 8, 3)
    mx = max_pool2d(x, kernel, stride, padding).data
    av = avg_pool2d(x, kernel, stride, padding).data
    np.testing.assert_allclose(mx, naive_pool(x, kernel, stride, padding, np.max, -np.inf),
                               rtol=1e-6)
    np.testing.assert_allclose(av, naive_pool(x, kernel, stride, padding, np.mean, 0.0),
                               rtol=1e-5, atol=1e-6)


def test_max_pool_ties_route_the_gradient_to_the_first_maximum():
    x = Tensor(np.ones((1, 2, 2, 1), np.float32), requires_grad=True)
    max_pool2d(x, 2).backward(np.array([[[[3.0]]]], np.float32))
    np.testing.assert_array_equal(x.grad.ravel(), [3.0, 0.0, 0.0, 0.0])


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def naive_lstm(x, wi, wh, bias, h, c):
    hid = wh.shape[0]
    outs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ wi + h @ wh + bias
        i, f, o = sig(z[:, :hid]), sig(z[:, hid:2 * hid]), sig(z[:, 2 * hid:3 * hid])
        g = np.tanh(z[:, 3 * hid:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outs.append(h)
    return np.stack(outs, 1), h, c


def naive_gru(x, wi, wh, bi, bh, h):
    hid = wh.shape[0]
    outs = []
    for t in range(x.shape[1]):
        xp, hp = x[:, t] @ wi + bi, h @ wh + bh
        r = sig(xp[:, :hid] + hp[:, :hid])
        z = sig(xp[:, hid:2 * hid] + hp[:, hid:2 * hid])
        n = np.tanh(xp[:, 2 * hid:] + r * hp[:, 2 * hid:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return np.stack(outs, 1), h


def test_lstm_matches_step_by_step_numpy():
    b, t, e, hid = 3, 6, 4, 5
    x, wi, wh, bias = randn(b, t, e), randn(e, 4 * hid), randn(hid, 4 * hid), randn(4 * hid)
    h0, c0 = randn(b, hid), randn(b, hid)
    state: list = []
    out = lstm(x, wi, wh, bias, h0, c0, state_out=state)
    ref, h_ref, c_ref = naive_lstm(*(a.astype(np.float64) for a in (x, wi, wh, bias, h0, c0)))
    assert out.shape == (b, t, hid)
    np.testing.assert_allclose(out.data, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state[0], h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state[1], c_ref, rtol=1e-5, atol=1e-5)
    zero = lstm(x, wi, wh, bias).data  # no state: zeros
    np.testing.assert_allclose(zero, naive_lstm(x, wi, wh, bias, 0.0 * h0, 0.0 * c0)[0],
                               rtol=1e-5, atol=1e-5)


def test_gru_matches_step_by_step_numpy():
    b, t, e, hid = 3, 6, 4, 5
    args = (randn(b, t, e), randn(e, 3 * hid), randn(hid, 3 * hid), randn(3 * hid),
            randn(3 * hid))
    h0 = randn(b, hid)
    state: list = []
    out = gru(*args, h0, state_out=state)
    ref, h_ref = naive_gru(*(a.astype(np.float64) for a in (*args, h0)))
    np.testing.assert_allclose(out.data, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state[0], h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gru(*args).data, naive_gru(*args, 0.0 * h0)[0], rtol=1e-5,
                               atol=1e-5)
