"""Comparisons across kernels (BLAS builds, fused or split operations, other machines).

Two kernels may round a sum differently; the difference is bounded by a few units in the last
place of the operands' magnitude, not of the result, which a sum can cancel to almost nothing
(so a relative tolerance on the result fails there while a wrong result still passes below it).
"""

from __future__ import annotations

import numpy as np


def assert_close_to_operands(
    got: np.ndarray, want: np.ndarray, magnitude: np.ndarray, ulps: float, dtype: type
) -> None:
    """``|got - want| <= ulps * eps(dtype) * magnitude`` elementwise, where ``magnitude`` is
    the sum of the absolute values of the terms (e.g. ``|a x| + |b y|``, or ``|A| @ |B|``)."""
    bound = ulps * np.finfo(dtype).eps * np.asarray(magnitude, np.float64)
    error = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    worst = float(np.max(error / np.maximum(bound, np.finfo(np.float64).tiny)))
    assert np.all(error <= bound), f"off by {worst:.3g} times the bound"
