"""Validation and folding in one pass: the norm is taken while an update is folded, the rare
refused one is undone exactly, and the limit comes from earlier rounds (the first round: from
its own norms)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator.backend import BLAS_MIN_SIZE, select_backend
from aggregator.fold import BLOCK, compiled_kernel
from aggregator.guard import NormGuard
from aggregator.strategies import StrategyContext, build_strategy
from aggregator.updates import ClientUpdate
from tests.tolerances import assert_close_to_operands


def _updates(size: int, scales: list[float], seed: int = 0) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(size, dtype=np.float32)
    updates = []
    for k, scale in enumerate(scales):
        step = np.float32(scale) * rng.standard_normal(size, dtype=np.float32)
        updates.append(ClientUpdate(10 + k, 1.0, 0.0, 4 * size, values=center + step))
    return center, updates


def _round(center, updates, factor=10.0, history=(), two_pass=False):
    strategy = build_strategy("fedavg", {"max_norm_factor": factor}, StrategyContext())
    strategy.guard.norms.extend(history)
    aggregation = strategy.start_round(center, 2)
    if two_pass:
        reasons = aggregation._measure_then_fold(updates)
    else:
        assert aggregation.one_pass
        reasons = aggregation.offer_all(updates)
    return aggregation.finish(), reasons, strategy.guard


@pytest.mark.parametrize("size", [1000, BLOCK + 3, BLAS_MIN_SIZE * 3 + 17])
@pytest.mark.parametrize("kind", ["values", "delta"])
def test_one_pass_gives_the_two_pass_model_and_norms(size, kind):
    center, updates = _updates(size, [0.01] * 5)
    if kind == "delta":  # a compressed reply decodes to a dense delta
        for u in updates:
            u.delta, u.values = u.values - center, None
    one, reasons, guard = _round(center, updates)
    norms = [u.norm for u in updates]
    for u in updates:
        u.norm = math.nan
    two, reasons2, guard2 = _round(center, updates, two_pass=True)
    assert reasons == reasons2 == [None] * 5
    if size < BLAS_MIN_SIZE or compiled_kernel() is None:
        # block by block, the same kernel in the same order: the two-pass model bit for bit
        assert np.array_equal(one, two)
    else:  # the compiled kernel's fused multiply-add: saxpy's, within rounding anywhere
        steps = [np.abs(u.delta if kind == "delta" else u.values - center) for u in updates]
        magnitude = np.abs(center) + 2 * np.max(steps, axis=0)  # every operand's scale
        assert_close_to_operands(one, two, magnitude, 4 * len(updates), np.float32)
    expected = [
        float(np.linalg.norm(u.values.astype(np.float64) - center))
        if kind == "values"
        else float(np.linalg.norm(u.delta.astype(np.float64)))
        for u in updates
    ]
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    assert list(guard.norms) == pytest.approx(list(guard2.norms), rel=1e-5)


def test_a_refused_update_is_undone_exactly():
    center, updates = _updates(5000, [0.01, 0.01, 1.0, 0.01, 0.01])
    updates[3].values = updates[3].values.copy()
    updates[3].values[7] = np.nan
    model, reasons, guard = _round(center, updates, history=[0.7] * 10)
    assert reasons[3] == "non-finite values (NaN or inf)"
    assert (
        reasons[2].startswith("update norm 70")
        and "exceeds the limit 7 (10 x the median" in (reasons[2])
    )
    clean, clean_reasons, _ = _round(center, [updates[i] for i in (0, 1, 4)], history=[0.7] * 10)
    assert clean_reasons == [None] * 3
    assert np.array_equal(model, clean)  # bit for bit: as if never offered
    assert len(guard.norms) == 10 + 3  # only the accepted norms join the history


def test_the_limit_comes_from_earlier_rounds_and_the_first_round_from_its_own():
    guard = NormGuard(factor=10.0, min_history=3)
    assert guard.limit([1.0, 2.0, 3.0]) == pytest.approx(20.0)  # first round: its own norms
    guard.norms.extend([0.5, 0.5, 0.5])
    assert guard.limit([100.0, 100.0, 100.0]) == pytest.approx(5.0)  # then history alone
    reasons = guard.judge([1.0, 6.0, math.inf])
    assert reasons[0] is None and "exceeds the limit 5" in reasons[1]
    assert reasons[2] == "update norm overflows (oversized values)"
    assert NormGuard(factor=0.0).judge([1e30]) == [None]  # factor 0: off


def test_two_pass_path_for_rules_that_need_the_norm_first():
    center, updates = _updates(1000, [0.01] * 4)
    backend = select_backend("cpu")
    strategy = build_strategy("fedmedian", None, StrategyContext(backend=backend))
    aggregation = strategy.start_round(center, 1)
    assert not aggregation.one_pass
    assert aggregation.offer_all(updates) == [None] * 4


def test_sparse_updates_fold_one_by_one_with_their_norms():
    center, updates = _updates(3000, [0.01] * 3)
    for u in updates:
        idx = np.arange(0, 3000, 7, dtype=np.int64)
        u.sparse, u.values = (idx, (u.values - center)[idx]), None
    one, reasons, _ = _round(center, updates)
    two, reasons2, _ = _round(center, updates, two_pass=True)
    assert reasons == reasons2 == [None] * 3
    assert np.array_equal(one, two)
    assert [u.norm for u in updates] == pytest.approx(
        [float(np.linalg.norm(u.sparse[1].astype(np.float64))) for u in updates], rel=1e-5
    )


def test_the_reason_states_the_norm_the_limit_and_the_median():
    guard = NormGuard(factor=10.0)
    guard.norms.extend([0.5, 0.7, 0.9])
    assert guard.judge([8.1]) == [
        "update norm 8.1 exceeds the limit 7 (10 x the median norm 0.7 of recent updates)"
    ]


def test_zero_norms_tell_no_scale_and_are_left_out_of_the_median():
    guard = NormGuard(factor=10.0)
    guard.norms.extend([0.0] * 50 + [1.0, 1.0, 1.0])
    assert guard.median() == 1.0 and guard.judge([5.0, 0.0]) == [None, None]
