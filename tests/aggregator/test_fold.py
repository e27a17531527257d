"""The blocked fold on one thread and on several, with the compiled kernel (numba) and with
numpy (where numba is missing): against a float64 reference, the same bits whatever the thread
count, each kernel against the other, and a refused update undone exactly with threads too."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from aggregator import fold as fold_module
from aggregator.backend import select_backend
from aggregator.fold import BLOCK, MIN_BLOCKS_PER_THREAD, fold_measured
from aggregator.strategies import StrategyContext, build_strategy
from aggregator.updates import ClientUpdate
from tests.requirements import missing
from tests.tolerances import assert_close_to_operands

# enough blocks for three threads, and a ragged last block
SIZE = 3 * MIN_BLOCKS_PER_THREAD * BLOCK + 1234
HISTORY = (0.01 * math.sqrt(SIZE),) * 5  # earlier rounds' norms: 0.01 steps


def _compiled_or_skip():
    """The compiled kernel; skips where numba is not installed, fails there under
    ``FEDCORE_REQUIRE_NUMBA=1`` (CI installs it with the server extra)."""
    kernel = fold_module.compiled_kernel()
    if kernel is None:  # pragma: no cover - numba comes with the server's dependencies
        missing("numba is not installed: the fold runs on numpy only", "FEDCORE_REQUIRE_NUMBA")
    return kernel


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Which path folds: numba's compiled kernel, or numpy's (as where numba is missing)."""
    if request.param == "compiled":
        _compiled_or_skip()
    else:
        monkeypatch.setattr(fold_module, "compiled_kernel", lambda: None)
    return request.param


def _updates(kinds: list[str], scales: list[float] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(SIZE, dtype=np.float32)
    updates = []
    for k, kind in enumerate(kinds):
        scale = np.float32(scales[k] if scales else 0.01)
        step = scale * rng.standard_normal(SIZE, dtype=np.float32)
        update = ClientUpdate(10 + k, 1.0, 0.0, 4 * SIZE)
        if kind == "values":
            update.values = center + step
        else:  # a compressed reply decodes to a dense delta
            update.delta = step
        updates.append(update)
    return center, updates


def _fold(center, updates, weights, threads):
    acc = np.zeros(SIZE, np.float32)
    for u in updates:
        u.norm = math.nan
    coefs = fold_measured(acc, updates, weights, center, select_backend("cpu", threads=threads))
    return acc, coefs, [u.norm for u in updates]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_fold_and_the_norms_match_a_float64_reference(kernel, threads):
    center, updates = _updates(["values", "delta", "values", "values", "delta"])
    weights = [3.0, 0.5, 7.0, 1.0, 2.5]
    acc, coefs, norms = _fold(center, updates, weights, threads)
    terms = [
        np.float64(w) * (u.values if u.values is not None else u.delta).astype(np.float64)
        for u, w in zip(updates, weights, strict=True)
    ]
    magnitude = np.sum([np.abs(t) for t in terms], axis=0)
    assert_close_to_operands(acc, np.sum(terms, axis=0), magnitude, 4 * len(terms), np.float32)
    assert coefs == [0.0, 0.5, 0.0, 0.0, 2.5]  # a delta's weight goes to the global model
    expected = [
        float(np.linalg.norm(u.values.astype(np.float64) - center))
        if u.values is not None
        else float(np.linalg.norm(u.delta.astype(np.float64)))
        for u in updates
    ]
    np.testing.assert_allclose(norms, expected, rtol=1e-5)


def test_the_same_bits_whatever_the_thread_count(kernel):
    center, updates = _updates(["values", "values", "delta", "values"])
    weights = [11.0, 12.0, 13.0, 14.0]
    acc, coefs, norms = _fold(center, updates, weights, 1)
    for threads in (2, 3, 8):
        acc_t, coefs_t, norms_t = _fold(center, updates, weights, threads)
        assert np.array_equal(acc, acc_t) and coefs == coefs_t and norms == norms_t


def test_a_non_finite_update_is_found_by_every_thread(kernel):
    center, updates = _updates(["values", "values", "delta", "values"])
    updates[1].values[-5] = np.inf  # in the last thread's part
    updates[2].delta[7] = np.nan  # in the first thread's part
    updates[3].values[BLOCK + 1] = -np.inf
    _, _, norms = _fold(center, updates, [1.0, 1.0, 1.0, 1.0], 2)
    assert math.isfinite(norms[0]) and all(math.isnan(n) for n in norms[1:])


def test_the_compiled_kernel_and_numpy_agree(monkeypatch):
    """Both paths fold the same sums (saxpy's fused multiply-add, or its numpy/BLAS form)
    and take the same norms (float64 sums, or float32 dots), to rounding of the operands."""
    _compiled_or_skip()
    # a group of four side by side (mixed kinds and scales), then three one at a time
    kinds = ["values", "delta", "values", "values", "delta", "values", "delta"]
    center, updates = _updates(kinds, [0.01, 0.5, 3.0, 1e-4, 2.0, 0.01, 1e-3])
    weights = [3.0, 0.25, 7.0, 1e3, 1.5, 2.0, 9.0]
    acc, coefs, norms = _fold(center, updates, weights, 2)
    monkeypatch.setattr(fold_module, "compiled_kernel", lambda: None)
    acc_np, coefs_np, norms_np = _fold(center, updates, weights, 2)
    magnitude = np.sum(
        [np.abs(np.float64(w) * (u.values if u.values is not None else u.delta))
         for u, w in zip(updates, weights, strict=True)], axis=0)  # fmt: skip
    assert_close_to_operands(acc, acc_np, magnitude, 2 * len(updates), np.float32)
    assert coefs == coefs_np
    # a float32 dot of a block of BLOCK squares: rounding of about sqrt(BLOCK) ulps at most
    np.testing.assert_allclose(norms, norms_np, rtol=64 * np.finfo(np.float32).eps)


def test_without_numba_the_fold_runs_on_numpy(monkeypatch, caplog):
    """numba not installed (its module cannot be imported): no compiled kernel, and the
    blocked fold still folds and measures."""
    monkeypatch.setattr(fold_module, "compiled_kernel", fold_module.compiled_kernel.__wrapped__)
    monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` raises ImportError
    monkeypatch.delitem(sys.modules, "aggregator.fold_kernel", raising=False)
    assert fold_module.compiled_kernel() is None
    assert "compiled fold kernel" not in caplog.text  # not installed: nothing to warn about
    center, updates = _updates(["values", "delta"])
    acc, _, norms = _fold(center, updates, [1.0, 2.0], 2)
    want = updates[0].values + np.float32(2.0) * updates[1].delta
    magnitude = np.abs(updates[0].values) + np.abs(2.0 * updates[1].delta)
    assert_close_to_operands(acc, want, magnitude, 2, np.float32)
    assert norms == pytest.approx([0.01 * math.sqrt(SIZE)] * 2, rel=0.05)


def test_a_numba_that_cannot_load_is_named_and_numpy_folds(monkeypatch, caplog):
    _compiled_or_skip()
    import numba

    def refuse(*args, **kwargs):
        raise ImportError("Numba needs NumPy 2.5 or less")

    monkeypatch.setattr(fold_module, "compiled_kernel", fold_module.compiled_kernel.__wrapped__)
    monkeypatch.delitem(sys.modules, "aggregator.fold_kernel", raising=False)
    monkeypatch.setattr(numba, "njit", refuse)  # the kernel's decorator fails as numba would
    assert fold_module.compiled_kernel() is None
    assert "unusable (Numba needs NumPy 2.5 or less); folding with numpy" in caplog.text


def test_a_kernel_that_fails_to_build_leaves_numpy_folding(monkeypatch, caplog):
    _compiled_or_skip()
    import aggregator.fold_kernel as compiled

    def broken(*args):
        raise RuntimeError("no LLVM target for this CPU")

    monkeypatch.setattr(fold_module, "compiled_kernel", fold_module.compiled_kernel.__wrapped__)
    monkeypatch.setattr(compiled, "fold_block", broken)
    assert fold_module.compiled_kernel() is None
    assert "the compiled fold kernel is unusable (no LLVM target" in caplog.text


def _round(center, updates, threads):
    backend = select_backend("cpu", threads=threads)
    context = StrategyContext(backend=backend)
    strategy = build_strategy("fedavg", {"max_norm_factor": 10.0}, context)
    strategy.guard.norms.extend(HISTORY)
    aggregation = strategy.start_round(center, 2)
    assert aggregation.one_pass
    reasons = aggregation.offer_all(updates)
    return aggregation.finish(), reasons


def test_a_refused_update_is_undone_exactly_with_two_threads(kernel):
    center, updates = _updates(["values"] * 4, [0.01, 1.0, 0.01, 0.01])
    model, reasons = _round(center, updates, threads=2)
    assert reasons[0] is None and reasons[1].startswith("update norm") and reasons[2:] == [None] * 2
    clean, clean_reasons = _round(center, [updates[i] for i in (0, 2, 3)], threads=1)
    assert clean_reasons == [None] * 3
    assert np.array_equal(model, clean)  # as if never offered, whatever the threads


def test_a_round_on_two_threads_gives_the_plain_fold(kernel):
    """numpy's blocks run the plain fold's own kernel: its bits; the compiled kernel fuses
    the multiply-add as BLAS's saxpy does on FMA hardware: its bits where the BLAS fuses too
    (measured so on the machines at hand), within rounding anywhere."""
    center, updates = _updates(["values", "delta", "values"])
    model, reasons = _round(center, updates, threads=2)
    assert reasons == [None] * 3
    strategy = build_strategy("fedavg", None, StrategyContext(backend=select_backend("cpu")))
    aggregation = strategy.start_round(center, 2)
    for u in updates:
        aggregation.rule.add(u, u.num_examples)  # the plain fold, no norms
    plain = aggregation.finish()
    if kernel == "numpy":
        assert np.array_equal(model, plain)
    else:  # |model| is a mean of values near the center: the operands' scale
        magnitude = np.abs(center) + np.abs(updates[1].delta)
        assert_close_to_operands(model, plain, magnitude, 4 * len(updates), np.float32)
