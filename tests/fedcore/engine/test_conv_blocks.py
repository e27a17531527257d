"""Convolution whose forward runs over blocks of images (im2col + GEMM per block), and whose
input gradient starts from a tap that covers the whole input: any block size, a ragged last
block, with or without such a tap, give PyTorch's result and gradients, to within rounding
scaled to the operands."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.engine import Tensor, conv, parallel
from fedcore.engine.conv import conv2d
from tests.fedcore.engine.test_parallel import two_threads
from tests.tolerances import assert_close_to_operands

torch = pytest.importorskip("torch")


def _torch_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, r: np.ndarray, stride, padding,
                ) -> tuple[np.ndarray, ...]:
    """(out, dx, dw, db) of sum(conv2d(x, w, b) * r) in float64, NHWC, weights (KH, KW, Ci, Co)."""
    xt = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
    wt = torch.tensor(w, dtype=torch.float64).permute(3, 2, 0, 1).requires_grad_()
    bt = torch.tensor(b, dtype=torch.float64).requires_grad_()
    out = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    (out * torch.tensor(r, dtype=torch.float64).permute(0, 3, 1, 2)).sum().backward()
    return (out.detach().permute(0, 2, 3, 1).numpy(), xt.grad.permute(0, 2, 3, 1).numpy(),
            wt.grad.permute(2, 3, 1, 0).numpy(), bt.grad.numpy())


@pytest.mark.parametrize("block_bytes", [1, 2500, 1 << 30])  # one image, a few, all
@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((7, 6, 5, 3, 4), 3, 1, 1),  # same padding: the centre tap writes the input gradient
    ((5, 7, 7, 1, 6), 3, 2, 1),  # one channel, stride 2, bias folded into the GEMM
    ((3, 6, 7, 8, 5), (3, 2), (2, 1), (0, 1)),
    ((4, 5, 5, 9, 3), 5, 1, 2),  # 225 columns: bias added after the GEMM
    ((3, 4, 4, 2, 3), 1, 1, 0),  # 1x1: the only tap covers the whole input
    ((2, 6, 6, 3, 2), 3, 1, 0),  # no padding: no tap covers the whole input
])
def test_blocked_conv_matches_torch(monkeypatch, block_bytes, shape, kernel, stride, padding):
    monkeypatch.setattr(conv, "BLOCK_BYTES", block_bytes)
    n, h, w_, cin, cout = shape
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng(sum(shape))
    x0 = rng.standard_normal((n, h, w_, cin)).astype(np.float32)
    w0 = rng.standard_normal((kh, kw, cin, cout)).astype(np.float32)
    b0 = rng.standard_normal(cout).astype(np.float32)
    x, w, b = (Tensor(a, requires_grad=True) for a in (x0, w0, b0))
    y = conv2d(x, w, b, stride=stride, padding=padding)
    r = rng.standard_normal(y.shape).astype(np.float32)
    (y * r).sum().backward()

    want = _torch_conv(x0, w0, b0, r, stride, padding)
    # each magnitude is the same computation on absolute values: the sum of |terms|
    mag = _torch_conv(np.abs(x0), np.abs(w0), np.abs(b0), np.abs(r), stride, padding)
    for got, exp, m in zip((y.data, x.grad, w.grad, b.grad), want, mag, strict=True):
        assert got.shape == exp.shape
        assert_close_to_operands(got, exp, m, 64, np.float32)


@pytest.mark.parametrize("cin", [1, 9])  # bias folded into the GEMM, and added after it
@pytest.mark.parametrize("trained", ["x", "b", "xb", "w"])
@pytest.mark.parametrize("padding", [0, 1])  # im2col again from the input, or its padded copy
def test_only_some_arguments_trained(monkeypatch, cin, trained, padding):
    """A frozen weight (fine-tuning below it), a bias alone, a weight alone: each gradient
    that is asked for is right, whichever saved inputs the others' absence leaves out."""
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(cin)
    x0 = rng.standard_normal((3, 5, 6, cin)).astype(np.float32)
    w0 = rng.standard_normal((3, 3, cin, 4)).astype(np.float32)
    b0 = rng.standard_normal(4).astype(np.float32)
    x, w, b = (Tensor(a, requires_grad=name in trained)
               for a, name in ((x0, "x"), (w0, "w"), (b0, "b")))
    y = conv2d(x, w, b, stride=(1, 2), padding=padding)
    r = rng.standard_normal(y.shape).astype(np.float32)
    (y * r).sum().backward()
    want = _torch_conv(x0, w0, b0, r, (1, 2), padding)
    mag = _torch_conv(np.abs(x0), np.abs(w0), np.abs(b0), np.abs(r), (1, 2), padding)
    for t, name, exp, m in zip((x, w, b), "xwb", want[1:], mag[1:], strict=True):
        if name in trained:
            assert_close_to_operands(t.grad, exp, m, 64, np.float32)
        else:
            assert t.grad is None


def test_blocked_weight_gradient_has_the_same_bits_on_two_threads(monkeypatch):
    """The weight gradient's blocks (one image each here) are a function of the shapes, and
    their partial products are added in block order: one thread and two agree bit for bit."""
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 6, 6, 8)).astype(np.float32)
    w0 = rng.standard_normal((3, 3, 8, 5)).astype(np.float32)
    r = rng.standard_normal((5, 6, 6, 5)).astype(np.float32)

    def grads() -> list[np.ndarray]:
        x, w = Tensor(x0, requires_grad=True), Tensor(w0, requires_grad=True)
        b = Tensor(np.zeros(5, np.float32), requires_grad=True)
        (conv2d(x, w, b, padding=1) * r).sum().backward()
        return [x.grad, w.grad, b.grad]

    with two_threads():  # restores the thread count it found
        two = grads()
        parallel.set_num_threads(1)
        one = grads()
    for a, c in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, c)
