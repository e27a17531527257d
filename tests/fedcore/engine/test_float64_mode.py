"""float64_mode: tensors, op outputs and gradients in float64 inside, float32 outside."""

import numpy as np

from fedcore.engine import Tensor, conv2d, default_float, float64_mode, matmul, sum


def test_default_is_float32_and_mode_switches_and_restores():
    assert default_float() is np.float32
    assert Tensor(np.ones(2, np.float64)).dtype == np.float32
    with float64_mode():
        assert default_float() is np.float64
        assert Tensor(np.ones(2, np.float32)).dtype == np.float64
        with float64_mode():
            pass
        assert default_float() is np.float64  # nested exit keeps the outer mode
    assert default_float() is np.float32


def test_mode_works_as_a_decorator():
    @float64_mode()
    def build() -> Tensor:
        return Tensor([1.0, 2.0])

    assert build().dtype == np.float64
    assert default_float() is np.float32


def test_ops_and_gradients_run_in_float64():
    with float64_mode():
        a = Tensor(np.full((2, 3), 1.0 / 3.0), requires_grad=True)
        w = Tensor(np.ones((1, 1, 1, 2)), requires_grad=True)
        y = sum(matmul(a, Tensor(np.ones((3, 3)))))
        y.backward()
        assert y.dtype == np.float64 and a.grad.dtype == np.float64
        assert abs(y.item() - 6.0) < 1e-15  # float32 would be off by ~1e-7
        out = conv2d(Tensor(np.ones((1, 2, 3, 1))), w)
        sum(out).backward()
        assert out.dtype == np.float64 and w.grad.dtype == np.float64
    assert Tensor([1.5]).dtype == np.float32
