"""The BLAS numpy loads: axpby in one pass, or a clear refusal that callers fall back on.

Where ``FEDCORE_REQUIRE_BLAS=1`` (set by CI, whose numpy wheels ship scipy-openblas) a missing
axpby binding fails instead of skipping, so the fast path cannot silently stop binding.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.engine import blas
from fedcore.optim.sgd import sgd_update
from tests.requirements import missing
from tests.tolerances import assert_close_to_operands


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpby_matches_ufuncs(dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(1001).astype(dtype), rng.standard_normal(1001).astype(dtype)
    want = (2.5 * x + 0.5 * y).astype(dtype)
    ax, by = 2.5 * x, 0.5 * y
    if not blas.axpby(2.5, x, 0.5, y):
        missing("numpy's BLAS has no scipy-openblas axpby here", "FEDCORE_REQUIRE_BLAS")
    # A kernel may fuse the multiply-add or round each product: a few ulps of |a x| + |b y|.
    assert_close_to_operands(y, want, np.abs(ax) + np.abs(by), 4, dtype)


def test_axpby_refuses_what_it_cannot_do_and_touches_nothing():
    y = np.ones(6, np.float32)
    assert not blas.axpby(1.0, np.ones(6), 1.0, y)  # float64 into float32
    assert not blas.axpby(1.0, np.ones(12, np.float32)[::2], 1.0, y)  # strided
    assert not blas.axpby(1.0, np.ones(5, np.float32), 1.0, y)  # sizes differ
    assert not blas.axpby(1.0, np.ones(6, np.int32), 1.0, np.ones(6, np.int32))
    np.testing.assert_array_equal(y, 1.0)


def test_sgd_momentum_through_blas_equals_the_ufunc_update(monkeypatch):
    rng = np.random.default_rng(1)
    p, g, b = (rng.standard_normal(4097).astype(np.float32) for _ in range(3))
    p2, b2 = p.copy(), b.copy()
    p0, b0 = p.copy(), b.copy()
    s = np.empty_like(p)
    sgd_update(p, g, b, s, 0.05, 0.9, 0.0, False)
    monkeypatch.setattr("fedcore.optim.sgd.axpby", lambda *a: False)  # the ufunc path
    sgd_update(p2, g, b2, s, 0.05, 0.9, 0.0, False)
    # Each side rounds every product once (or fuses it): a few ulps of the operands apart.
    momentum = 0.9 * np.abs(b0) + np.abs(g)
    assert_close_to_operands(b, b2, momentum, 4, np.float32)
    assert_close_to_operands(p, p2, np.abs(p0) + 0.05 * momentum, 4, np.float32)
