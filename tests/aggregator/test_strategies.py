import numpy as np
import pytest

from aggregator.strategies import WeightedMean, build_strategy, known_strategies


def test_weighted_mean_matches_numpy_average():
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=100).astype(np.float32) for _ in range(7)]
    weights = rng.integers(1, 50, size=7)
    rule = WeightedMean(100)
    for v, w in zip(vectors, weights, strict=True):
        rule.add(v, float(w))
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    np.testing.assert_allclose(rule.result(), expected, rtol=1e-6)
    assert rule.result().dtype == np.float32


def test_weighted_mean_rejects_nothing_and_bad_weights():
    rule = WeightedMean(3)
    with pytest.raises(ValueError, match="no update"):
        rule.result()
    with pytest.raises(ValueError, match="positive"):
        rule.add(np.zeros(3, np.float32), 0)


def test_unknown_strategy_lists_known_names():
    assert "fedavg" in known_strategies()
    with pytest.raises(ValueError, match="fedavg"):
        build_strategy("fedsomething")
