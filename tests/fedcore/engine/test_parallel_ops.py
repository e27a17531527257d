"""Intra-op threads: the layer ops give identical results on one thread and on several."""

import numpy as np
import pytest

from fedcore.engine import Tensor, avg_pool2d, conv2d, max_pool2d, sum
from fedcore.engine.parallel import get_num_threads, parallel_range, set_num_threads


@pytest.fixture
def threads():
    yield set_num_threads
    set_num_threads(None)


def conv_pool_step(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = conv2d(xt, wt, padding=1)
    out = sum(max_pool2d(y, 2) * 1.5) + sum(avg_pool2d(y, 3, 2, 1))
    out.backward()
    return y.data.copy(), xt.grad.copy(), wt.grad.copy()


def test_threaded_ops_match_single_threaded(threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 8)).astype(np.float32)  # big enough to be split
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    threads(1)
    assert get_num_threads() == 1
    single = conv_pool_step(x, w)
    threads(3)
    multi = conv_pool_step(x, w)
    for a, b in zip(single, multi, strict=True):
        np.testing.assert_array_equal(a, b)


def test_parallel_range_covers_the_range_once(threads):
    threads(4)
    seen = np.zeros(10, int)

    def mark(lo: int, hi: int) -> None:
        seen[lo:hi] += 1

    parallel_range(10, mark)
    np.testing.assert_array_equal(seen, 1)
    parallel_range(3, mark, min_chunk=2)  # too small to split: runs inline
    np.testing.assert_array_equal(seen[:3], 2)
    with pytest.raises(ValueError, match="n >= 1"):
        set_num_threads(0)


def test_worker_errors_propagate(threads):
    threads(2)

    def boom(lo: int, hi: int) -> None:
        if lo:
            raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"):
        parallel_range(4, boom)


def test_lstm_with_threads_matches_single_threaded(threads):
    from fedcore.engine import lstm

    rng = np.random.default_rng(1)
    b, t, e, h = 16, 16, 8, 256  # enough work for the projection and BPTT precompute to split
    arrays = (rng.standard_normal((b, t, e)), rng.standard_normal((e, 4 * h)) * 0.1,
              rng.standard_normal((h, 4 * h)) * 0.05, rng.standard_normal(4 * h))

    def run() -> list[np.ndarray]:
        ts = [Tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
        out = lstm(*ts)
        (out * out).backward(np.ones(out.shape, np.float32))
        return [out.data.copy(), *(x.grad.copy() for x in ts)]

    threads(1)
    single = run()
    threads(2)
    for a, b_ in zip(single, run(), strict=True):
        np.testing.assert_array_equal(a, b_)
