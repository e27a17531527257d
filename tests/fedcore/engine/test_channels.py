"""Per-channel helpers on folded rows: the same values as numpy's own broadcasts and sums."""

import numpy as np
import pytest

from fedcore.engine.channels import RUN, WIDE, channel_dot, channel_op, channel_sum, fold

rng = np.random.default_rng(3)


@pytest.mark.parametrize("shape", [
    (1536, 8),       # wide: two rows of 768 channel groups
    (2, 24, 32, 8),  # the same rows, 4-D
    (1537, 8),       # no divisor long enough under the whole: one flat row
    (7, 3),          # tiny: one row
    (6272, 16),      # the MobileNet's 14x14x16 BatchNorm
    (5, 9000),       # channels alone longer than WIDE
])
def test_folds_keep_whole_channel_groups(shape):
    x = np.zeros(shape, np.float32)
    c, r = shape[-1], x.size // shape[-1]
    for wide in (False, True):
        x2, k = fold(x, wide=wide)
        assert x2.shape == (r // k, k * c) and r % k == 0
        assert np.shares_memory(x2, x)
        if wide:  # long enough (or all of x), yet the shortest such rows
            assert k * c >= WIDE or k == r
            assert not any(r % j == 0 for j in range(-(-WIDE // c), k))
        else:
            assert k == 1 or k * c <= RUN


@pytest.mark.parametrize("shape", [(1536, 8), (2, 24, 32, 8), (1537, 8), (32, 7, 7, 32)])
@pytest.mark.parametrize("ufunc", [np.add, np.subtract, np.multiply])
def test_channel_ops_match_numpy_broadcasts(shape, ufunc):
    x = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape[-1]).astype(np.float32)
    np.testing.assert_array_equal(channel_op(ufunc, x, v, np.empty_like(x)), ufunc(x, v))
    y = x.copy()
    np.testing.assert_array_equal(channel_op(ufunc, y, v, y), ufunc(x, v))  # in place


@pytest.mark.parametrize("shape", [(1536, 8), (1537, 8), (32, 14, 14, 16)])
def test_channel_sums_match_numpy(shape):
    x, y = rng.standard_normal(shape), rng.standard_normal(shape)
    flat_x, flat_y = x.reshape(-1, shape[-1]), y.reshape(-1, shape[-1])
    scale = np.sqrt(flat_x.shape[0])  # the sums' size: their rounding grows with it
    np.testing.assert_allclose(channel_sum(x), flat_x.sum(0), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(channel_dot(x, y), (flat_x * flat_y).sum(0), rtol=0,
                               atol=1e-12 * scale)
