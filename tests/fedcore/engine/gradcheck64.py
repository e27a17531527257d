"""Central finite-difference gradient checks run in float64 mode (tight tolerances)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedcore.engine import Tensor, float64_mode


def numeric_grad(value: Callable[[list[np.ndarray]], float], arrays: list[np.ndarray], i: int,
                 eps: float) -> np.ndarray:
    """d value / d arrays[i] by central differences, one element at a time."""
    out = np.zeros(arrays[i].shape)
    flat_out = out.reshape(-1)
    flat = arrays[i].reshape(-1)
    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + eps
        plus = value(arrays)
        flat[j] = orig - eps
        minus = value(arrays)
        flat[j] = orig
        flat_out[j] = (plus - minus) / (2 * eps)
    return out


def check_grads64(
    fn: Callable[..., Tensor],
    arrays: Sequence[np.ndarray],
    wrt: Sequence[int] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    seed: int = 0,
) -> None:
    """Autograd gradients of sum(fn(*args) * R) against central differences, in float64.

    Float inputs become float64; integer inputs (labels, token ids) are passed through and
    are not differentiated. `wrt` defaults to every float input.
    """
    arrays = [np.array(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.array(a)
              for a in arrays]
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    with float64_mode():
        tensors = [Tensor(a.copy(), requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
        out = fn(*tensors)
        assert out.dtype == np.float64, f"op ran in {out.dtype}, not float64"
        proj = np.random.default_rng(seed).standard_normal(out.shape)
        out.backward(proj)

        def value(args: list[np.ndarray]) -> float:
            return float(np.sum(fn(*[Tensor(a.copy()) for a in args]).data * proj))

        for i in wrt:
            analytic = tensors[i].grad
            assert analytic is not None, f"no gradient for argument {i}"
            assert analytic.dtype == np.float64, analytic.dtype
            numeric = numeric_grad(value, arrays, i, eps)
            np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                       err_msg=f"gradient of argument {i}")
