"""Central finite-difference gradient checks for float32 ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedcore.engine import Tensor


def check_grads(
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray],
    wrt: Sequence[int] | None = None,
    eps: float = 1e-2,
    rtol: float = 2e-2,
    atol: float = 2e-3,
    seed: int = 0,
) -> None:
    """Compare autograd gradients of sum(fn(*args) * R) with central differences.

    The inputs are float32 (as the engine is); the projection and differences are taken in
    float64, and eps is large enough for float32 rounding to stay well below the tolerance.
    """
    arrays = [np.array(a, np.float32) if np.asarray(a).dtype.kind == "f" else np.array(a)
              for a in arrays]
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    tensors = [Tensor(a.copy(), requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal(out.shape).astype(np.float32)
    out.backward(proj)

    def value(args: list[np.ndarray]) -> float:
        res = fn(*[Tensor(a) for a in args]).data
        return float(np.sum(res.astype(np.float64) * proj))

    for i in wrt:
        analytic = tensors[i].grad
        assert analytic is not None, f"no gradient for argument {i}"
        assert analytic.dtype == np.float32, analytic.dtype
        numeric = np.zeros(arrays[i].shape)
        flat = numeric.reshape(-1)
        for j in range(arrays[i].size):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[i].reshape(-1)[j] += eps
            minus[i].reshape(-1)[j] -= eps
            step = float(plus[i].reshape(-1)[j]) - float(minus[i].reshape(-1)[j])
            flat[j] = (value(plus) - value(minus)) / step
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of argument {i}")
