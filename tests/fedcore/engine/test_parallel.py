"""Intra-op parallelism: slabs cover every row once, errors surface, results match one thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from fedcore.engine import Tensor, parallel, softmax_cross_entropy
from fedcore.engine.conv import conv2d
from fedcore.engine.ops import relu
from fedcore.engine.pooling import max_pool2d
from fedcore.models import build_model
from fedcore.optim import SGD
from tests.tolerances import assert_close_to_operands


@contextmanager
def two_threads() -> Iterator[None]:
    """Two intra-op threads, tiny grains and BLAS claimed at one thread (what the first split
    of a big model does); then all of it restored, BLAS's own thread count included, so no
    later test depends on the order the tests ran in."""
    from fedcore.engine.blas import _controllers

    saved = parallel.get_num_threads(), parallel.GRAIN, parallel.GEMM_GRAIN
    claimed = parallel._state.get("blas")
    before = [c.num_threads for c in _controllers()]
    parallel.set_num_threads(2)
    parallel.GRAIN, parallel.GEMM_GRAIN = 1, 1
    parallel._state.pop("blas", None)
    assert parallel._claim_blas() == bool(before)  # products split too from here on
    try:
        yield
    finally:
        parallel.set_num_threads(saved[0])
        parallel.GRAIN, parallel.GEMM_GRAIN = saved[1], saved[2]
        for c, n in zip(_controllers(), before, strict=True):
            c.set_num_threads(n)
        if claimed is None:
            parallel._state.pop("blas", None)
        else:
            parallel._state["blas"] = claimed


@pytest.fixture
def threads():
    """Run a test inside `two_threads()`."""
    with two_threads():
        yield


def test_two_threads_restores_blas_threads_and_the_claim():
    from fedcore.engine.blas import _controllers

    ctls = _controllers()
    if not ctls:
        pytest.skip("BLAS threads cannot be controlled here (no threadpoolctl)")
    before = [c.num_threads for c in ctls]
    claimed = parallel._state.get("blas")
    try:
        for c in ctls:
            c.set_num_threads(3)  # a count the test can tell apart from the claim's 1
        with two_threads():
            assert [c.num_threads for c in ctls] == [1] * len(ctls)
            assert parallel._state["blas"] is True and parallel.get_num_threads() == 2
        assert [c.num_threads for c in ctls] == [3] * len(ctls)
        assert parallel._state.get("blas") is claimed
    finally:
        for c, n in zip(ctls, before, strict=True):
            c.set_num_threads(n)


def test_slabs_cover_every_row_once_on_two_threads(threads):
    seen, names = [], set()
    lock = threading.Lock()

    def fn(lo: int, hi: int) -> None:
        with lock:
            seen.append((lo, hi))
            names.add(threading.current_thread().name)

    parallel.parallel_for(101, fn, work=10**9)
    assert sorted(seen) == [(0, 50), (50, 101)]
    assert len(names) == 2  # the caller and one worker


def test_small_work_or_one_thread_runs_serially(threads):
    calls = []
    parallel.GRAIN = 1000
    parallel.parallel_for(10, lambda lo, hi: calls.append((lo, hi)), work=999)
    parallel.GRAIN = 1
    parallel.set_num_threads(1)
    parallel.parallel_for(10, lambda lo, hi: calls.append((lo, hi)), work=10**9)
    assert calls == [(0, 10), (0, 10)]


def test_a_kernel_of_short_calls_is_split_only_when_each_call_is_worth_a_grain(threads):
    """The same work splits as one call a slab, stays whole as eight short calls a slab
    (the GIL convoy), and splits again once each of its calls is worth GRAIN per slab."""
    parallel.GRAIN = 1000
    seen: list[tuple[int, int]] = []

    def fn(lo: int, hi: int) -> None:
        seen.append((lo, hi))

    parallel.parallel_for(10, fn, work=8 * 2000)
    assert sorted(seen) == [(0, 5), (5, 10)]
    seen.clear()
    parallel.parallel_for(10, fn, work=8 * 2000 - 1, calls=8)
    assert seen == [(0, 10)]
    seen.clear()
    parallel.parallel_for(10, fn, work=8 * 2000, calls=8)
    assert sorted(seen) == [(0, 5), (5, 10)]


def test_rms_norm_rope_and_swiglu_at_the_tiny_gpt_shape_run_whole(monkeypatch):
    """At the tiny GPT's shape (1024 rows of 256) and the real grains, RMSNorm's forward
    and gradients, RoPE and SwiGLU make no split region on two threads: their calls are short."""
    from fedcore.engine import rms_norm, rope
    from fedcore.engine.ops_nn import swiglu

    splits: list[int] = []
    real = parallel._split
    monkeypatch.setattr(parallel, "_split", lambda n, fn, t: (splits.append(t), real(n, fn, t)))
    saved = parallel.get_num_threads()
    parallel.set_num_threads(2)
    try:
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((8, 128, 256)).astype(np.float32), requires_grad=True)
        g = Tensor(np.ones(256, np.float32), requires_grad=True)
        q = Tensor(rng.standard_normal((8, 128, 8, 32)).astype(np.float32), requires_grad=True)
        a = Tensor(rng.standard_normal((8, 128, 688)).astype(np.float32), requires_grad=True)
        for y in (rms_norm(x, g), rope(q), swiglu(a, a * 1.0)):
            (y * 1.0).sum().backward()
    finally:
        parallel.set_num_threads(saved)
    assert splits == []


def test_a_worker_error_reaches_the_caller_and_the_pool_stays_usable(threads):
    def fn(lo: int, hi: int) -> None:
        if lo > 0:
            raise ValueError("slab failed")

    with pytest.raises(ValueError, match="slab failed"):
        parallel.parallel_for(4, fn, work=10**9)
    out = []
    parallel.parallel_for(4, lambda lo, hi: out.append(hi - lo), work=10**9)
    assert sorted(out) == [2, 2]


def test_a_nested_call_runs_serially_instead_of_deadlocking(threads):
    inner = []

    def outer(lo: int, hi: int) -> None:
        parallel.parallel_for(6, lambda a, b: inner.append((lo, a, b)), work=10**9)

    parallel.parallel_for(2, outer, work=10**9)
    assert sorted(inner) == [(0, 0, 6), (1, 0, 6)]


def test_elementwise_cuts_full_rank_arguments_and_broadcasts_the_rest(threads):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((9, 4))
    bias = rng.standard_normal(4)  # a row: every slab gets it whole
    col = rng.standard_normal((1, 4))  # full rank but one row: broadcast too
    out = np.empty_like(x)
    assert parallel.elementwise(np.add, out, x, bias) is out
    np.testing.assert_array_equal(out, x + bias)
    parallel.elementwise(np.multiply, out, x, col)
    np.testing.assert_array_equal(out, x * col)
    parallel.elementwise(np.maximum, x, x, 0.0)  # in place
    assert (x >= 0).all()
    s = np.empty(())
    parallel.elementwise(np.add, s, np.float64(1.0), 2.0)  # 0-d: one call
    assert s == 3.0


@pytest.mark.parametrize("shape", [(300, 40, 20), (20, 40, 300), (7, 5, 3)])
def test_split_matmul_matches_numpy(threads, shape):
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m)).T  # a transposed view, as weight gradients use
    b = rng.standard_normal((k, n))
    # slabs may be blocked differently from the whole product: k ulps of |a| @ |b| apart
    assert_close_to_operands(parallel.matmul(a, b), a @ b, np.abs(a) @ np.abs(b), k, np.float64)
    out = np.empty((m, n))
    assert parallel.matmul(a, b, out=out) is out


def test_thread_count_is_validated(monkeypatch):
    with pytest.raises(ValueError, match="whole number >= 1"):
        parallel.set_num_threads(0)
    monkeypatch.setitem(parallel._state, "threads", None)
    monkeypatch.setenv(parallel.ENV_VAR, "two")
    with pytest.raises(ValueError, match="FEDCORE_NUM_THREADS='two'"):
        parallel.get_num_threads()
    monkeypatch.setenv(parallel.ENV_VAR, "3")
    assert parallel.get_num_threads() == 3
    # without ours, a worker's OMP_NUM_THREADS (Ray sets it to the worker's cores) counts
    monkeypatch.setitem(parallel._state, "threads", None)
    monkeypatch.delenv(parallel.ENV_VAR)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parallel.get_num_threads() == 1
    monkeypatch.setitem(parallel._state, "threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not ours to reject: every core
    assert parallel.get_num_threads() >= 1


def _kernels() -> list[np.ndarray]:
    """Forward results and gradients of the split kernels, on fixed inputs."""
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((6, 8, 8, 3)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 3, 4)).astype(np.float32), requires_grad=True)
    b = Tensor(np.zeros(4, np.float32), requires_grad=True)
    h = relu(max_pool2d(conv2d(x, w, b, padding=1), 2))
    logits = h.reshape(6, -1) @ Tensor(rng.standard_normal((64, 5)).astype(np.float32))
    loss = softmax_cross_entropy(logits, rng.integers(0, 5, 6))
    loss.backward()
    return [loss.numpy(), h.numpy(), x.grad.copy(), w.grad.copy(), b.grad.copy()]


def test_kernels_give_the_same_results_on_one_and_two_threads(threads):
    two = _kernels()
    parallel.set_num_threads(1)
    one = _kernels()
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _train_cnn() -> np.ndarray:
    model = build_model("cnn", input_dim=64, channels=(4, 8), hidden=16, seed=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(2)
    for _ in range(3):
        opt.zero_grad()
        x = rng.standard_normal((16, 64)).astype(np.float32)
        softmax_cross_entropy(model(x), rng.integers(0, 10, 16)).backward()
        opt.step()
    return model.get_flat()


def test_split_kernels_under_the_threaded_engine(threads):
    """Engine workers run ops at once; a split inside one of them, while another op holds
    the intra-op workers, runs serially: the same model as the synchronous engine."""
    from fedcore.engine import use_engine
    from fedcore.engine.threaded import ThreadedEngine

    parallel.GEMM_GRAIN = 1 << 40  # whole products only: BLAS may round a slab differently
    ref = _train_cnn()
    eng = ThreadedEngine(num_workers=3)
    try:
        with use_engine(eng):
            got = _train_cnn()
    finally:
        eng.shutdown()
    np.testing.assert_array_equal(got, ref)


def test_training_steps_match_across_thread_counts(threads):
    two = _train_cnn()
    parallel.set_num_threads(1)
    np.testing.assert_allclose(_train_cnn(), two, rtol=1e-4, atol=1e-6)


def test_rnn_gradients_match_across_thread_counts(threads):
    """The weight gradients of chunks of steps are folded in beside the walk on two threads,
    as one chunk at the end on one: the same gradients up to float32 rounding."""
    from fedcore.engine import gru, lstm

    parallel.GEMM_GRAIN = 1 << 40  # whole products only: BLAS may round a slab differently
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in
              ((3, 13, 4), (4, 24), (6, 24), (24,), (4, 18), (6, 18), (18,), (18,))]

    def grads() -> list[np.ndarray]:
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        x, wi, wh, b, gi, gh, bi, bh = ts
        out = lstm(x, wi, wh, b).sum() + gru(x, gi, gh, bi, bh).sum()
        out.backward()
        return [t.grad.copy() for t in ts]

    two = grads()
    parallel.set_num_threads(1)
    for a, b in zip(grads(), two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)



def test_attention_split_over_threads_matches_serial():
    """Sequences split over two intra-op threads give the one-thread result bit for bit
    (each thread runs whole sequences; nothing is summed across threads)."""
    from fedcore.engine import attention, mul
    from fedcore.engine import sum as esum

    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 24, 4, 8)).astype(np.float32)
    k, v = (rng.standard_normal((4, 24, 2, 8)).astype(np.float32) for _ in range(2))
    r = rng.standard_normal(q.shape).astype(np.float32)
    results = []
    for split in (False, True):
        ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
        if split:
            with two_threads():
                out = attention(*ts, block=8)
                esum(mul(out, r)).backward()
        else:
            out = attention(*ts, block=8)
            esum(mul(out, r)).backward()
        results.append([out.numpy().copy()] + [t.grad.copy() for t in ts])
    for serial, split in zip(*results, strict=True):
        np.testing.assert_array_equal(serial, split)


@pytest.mark.parametrize("stride", [1, 2, (2, 1)])
def test_depthwise_conv_split_over_threads_matches_serial(stride):
    """Images split over two intra-op threads: the output and the input gradient bit for
    bit (each image whole on one thread); the weight gradient sums one partial per thread."""
    from fedcore.engine import depthwise_conv2d, float64_mode, mul
    from fedcore.engine import sum as esum

    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 9, 8, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)

    def step(arrays: list[np.ndarray], r: np.ndarray | None) -> list[np.ndarray]:
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        out = depthwise_conv2d(*ts, stride=stride, padding=1)
        r = rng.standard_normal(out.shape).astype(np.float32) if r is None else r
        esum(mul(out, r.astype(out.dtype))).backward()
        return [out.numpy().copy(), *(t.grad.copy() for t in ts), r]

    o1, dx1, dw1, db1, r = step([x, w, b], None)
    with two_threads():
        o2, dx2, dw2, db2, _ = step([x, w, b], r)
    with float64_mode():  # dW's terms |x| |r| summed: the scale of its rounding
        magnitude = step([np.abs(x).astype(np.float64), w.astype(np.float64),
                          b.astype(np.float64)], np.abs(r).astype(np.float64))[2]
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(dx1, dx2)
    assert_close_to_operands(dw2, dw1, magnitude, 8, np.float32)
    np.testing.assert_array_equal(db1, db2)


def test_tasks_run_side_by_side_only_when_there_is_one_per_thread(threads):
    ran: list[tuple[int, int]] = []

    def job(i: int):
        return lambda: ran.append((i, threading.get_ident()))

    parallel.tasks([job(0), job(1)], work=10)
    assert sorted(i for i, _ in ran) == [0, 1] and len({t for _, t in ran}) == 2
    ran.clear()
    parallel.set_num_threads(3)  # fewer jobs than threads: each job splits itself instead
    parallel.tasks([job(0), job(1)], work=10)
    assert [i for i, _ in ran] == [0, 1] and {t for _, t in ran} == {threading.get_ident()}
    parallel.set_num_threads(2)

    def boom() -> None:
        raise ValueError("job failed")

    with pytest.raises(ValueError, match="job failed"):
        parallel.tasks([job(0), boom], work=10)


@pytest.mark.parametrize("op", ["matmul", "matmul_nt", "linear", "same_input"])
def test_product_gradients_side_by_side_match_one_thread(threads, op):
    """A product's input and weight gradients computed at once on two threads (each a whole
    one-thread GEMM) are bit for bit those of one thread, into fresh and accumulated buffers;
    matmul(x, x), whose two gradients meet in one buffer, stays serial and right."""
    from fedcore.engine import linear, matmul, matmul_nt

    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((24, 16)).astype(np.float32)
    w0 = rng.standard_normal((16, 16)).astype(np.float32)
    b0 = rng.standard_normal(16).astype(np.float32)
    r = rng.standard_normal((24, 16)).astype(np.float32)

    def grads() -> list[np.ndarray]:
        x, w, b = (Tensor(a, requires_grad=True) for a in (x0, w0, b0))
        for _ in range(2):  # the second backward adds into the gradients of the first
            h = relu(x * 1.0)  # a non-leaf input: its gradient is a fresh buffer
            y = (matmul(h, w) if op == "matmul" else matmul_nt(h, w) if op == "matmul_nt"
                 else linear(h, w, b) if op == "linear" else matmul(w, w))
            (y * r[:y.shape[0]]).sum().backward()
        return [t.grad.copy() for t in (x, w, b) if t.grad is not None]

    two = grads()
    parallel.set_num_threads(1)
    one = grads()
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    if op == "same_input":
        np.testing.assert_allclose(one[0], 2 * (r[:16] @ w0.T + w0.T @ r[:16]), rtol=1e-5,
                                   atol=1e-5)
