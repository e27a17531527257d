"""Convolution whose forward runs over blocks of images (im2col + GEMM per block), and whose
input gradient starts from a tap that covers the whole input: any block size, a ragged last
block, with or without such a tap, give PyTorch's result and gradients, to within rounding
scaled to the operands."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.engine import Tensor, conv
from fedcore.engine.conv import conv2d
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
