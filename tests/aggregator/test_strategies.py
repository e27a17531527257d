"""Rules, server optimizers, wrappers and the registry, on numpy and on array-api-strict."""

import numpy as np
import pytest

from aggregator.backend import select_backend
from aggregator.fold import delta_norm
from aggregator.strategies import (
    AggregationError,
    StrategyContext,
    WeightedMean,
    build_strategy,
    known_strategies,
    strategy_options,
)
from aggregator.updates import ClientUpdate, Rejected
from fedcore import compression
from tests.aggregator.conftest import BACKENDS


def dense(vector, n=1, loss=1.0):
    return ClientUpdate(n, loss, 0.0, vector.nbytes, values=vector)


@pytest.mark.parametrize("device", BACKENDS)
def test_weighted_mean_matches_numpy_average(device):
    backend = select_backend(device)
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=100).astype(np.float32) for _ in range(7)]
    weights = rng.integers(1, 50, size=7)
    rule = WeightedMean(100, backend)
    for v, w in zip(vectors, weights, strict=True):
        rule.add(dense(v), float(w))
    got = backend.to_numpy(rule.result(backend.asarray(np.zeros(100, np.float32))))
    expected = np.average(np.stack(vectors), axis=0, weights=weights)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32


def test_weighted_mean_rejects_nothing_and_bad_weights():
    rule = WeightedMean(3, select_backend("cpu"))
    with pytest.raises(AggregationError, match="no update"):
        rule.result(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="positive"):
        rule.add(dense(np.zeros(3, np.float32)), 0)


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("codec", ["int8", "int4", "topk"])
def test_compressed_deltas_fold_like_dense_vectors(device, codec):
    """A delta sent compressed lands where its decoded dense vector would."""
    backend = select_backend(device)
    rng = np.random.default_rng(3)
    g = rng.standard_normal(3000).astype(np.float32)
    local = (g + 0.1 * rng.standard_normal(3000)).astype(np.float32)
    payload = compression.encode(codec, local - g, rng)
    decoded = compression.decode(codec, payload, g.size)
    if isinstance(decoded, tuple):
        update = ClientUpdate(2, 1.0, 0.0, 0, sparse=decoded)
        reference = g.copy()
        reference[decoded[0]] += decoded[1]
    else:
        update = ClientUpdate(2, 1.0, 0.0, 0, delta=decoded)
        reference = g + decoded
    rule = WeightedMean(g.size, backend)
    rule.add(update, 2)
    rule.add(dense(local), 1)
    got = backend.to_numpy(rule.result(backend.asarray(g)))
    np.testing.assert_allclose(got, (2 * reference + local) / 3, rtol=1e-5, atol=1e-5)


def test_delta_norm_and_its_rejections():
    g = np.zeros(5, np.float32)
    assert delta_norm(dense(np.array([3, 4, 0, 0, 0], np.float32)), g) == pytest.approx(5.0)
    with pytest.raises(Rejected, match="non-finite"):
        delta_norm(dense(np.array([0, np.nan, 0, 0, 0], np.float32)), g)
    with pytest.raises(Rejected, match="overflow"):
        delta_norm(dense(np.full(5, 3e38, np.float32)), g)


def test_norm_guard_drops_outliers_against_the_median():
    strategy = build_strategy("fedavg", {"max_norm_factor": 5.0}, StrategyContext())
    g = np.zeros(4, np.float32)
    agg = strategy.start_round(g, 1)
    for k in range(4):
        agg.offer(dense(np.full(4, 1.0 + k / 10, np.float32)))
    limit = r"norm 200 exceeds the limit 11.5 \(5 x the median norm 2.3 of recent"
    with pytest.raises(Rejected, match=limit):
        agg.offer(dense(np.full(4, 100.0, np.float32)))
    np.testing.assert_allclose(agg.finish(), np.full(4, 1.15, np.float32), rtol=1e-6)


@pytest.mark.parametrize("device", BACKENDS)
def test_robust_rules_ignore_a_huge_outlier(device):
    ctx = StrategyContext(backend=select_backend(device))
    g = np.zeros(6, np.float32)
    honest = [np.full(6, 1.0 + k / 100, np.float32) for k in range(6)]
    for name, options in [
        ("fedmedian", {}),
        ("fedtrimmedavg", {"beta": 0.2}),
        ("krum", {"num_malicious": 1}),
        ("multikrum", {"num_malicious": 1, "select": 3}),
        ("bulyan", {"num_malicious": 1}),
    ]:
        agg = build_strategy(name, {**options, "max_norm_factor": 0.0}, ctx).start_round(g, 1)
        for v in [*honest, np.full(6, 1e4, np.float32)]:
            agg.offer(dense(v))
        result = agg.finish()
        assert np.all(np.abs(result - 1.0) < 0.1), (name, result)


def test_bulyan_needs_enough_updates():
    agg = build_strategy("bulyan", {"num_malicious": 2}).start_round(np.zeros(3, np.float32), 1)
    for k in range(5):
        agg.offer(dense(np.full(3, float(k), np.float32)))
    with pytest.raises(AggregationError, match="= 11 updates"):
        agg.finish()


def test_qfedavg_weighs_high_loss_clients_more():
    g = np.zeros(2, np.float32)
    agg = build_strategy("qfedavg", {"q": 1.0, "max_norm_factor": 0.0}).start_round(g, 1)
    agg.offer(dense(np.array([1.0, 0.0], np.float32), loss=5.0))
    agg.offer(dense(np.array([0.0, 1.0], np.float32), loss=0.5))
    new = agg.finish()
    assert new[0] > new[1] > 0


@pytest.mark.parametrize("name, sigma", [("dpfedavg", 0.5), ("dpfedavg-adaptive", 0.1)])
def test_dp_clips_adds_noise_and_reports_epsilon(name, sigma):
    options = {"noise_multiplier": sigma, "max_norm_factor": 0.0}
    strategy = build_strategy(name, options, StrategyContext(num_clients=100, clients_per_round=4))
    size = 10_000
    g = np.zeros(size, np.float32)
    epsilons = []
    for rnd in (1, 2):
        clip = strategy.privacy.clipping_norm
        agg = strategy.start_round(g, rnd)
        for k in range(4):  # every delta (norm 500 .. 2000) is clipped to ``clip``
            agg.offer(dense(np.full(size, 5.0 * (k + 1), np.float32), n=10 * (k + 1)))
        new = agg.finish()
        epsilons.append(strategy.privacy_spent())
    assert 0 < epsilons[0] < epsilons[1] < float("inf")
    # The noise on the average of 4 clipped deltas has std z * clip / 4, z derived from sigma
    # alone: sigma itself with a fixed norm; with an adaptive one, the part of the budget left
    # once the clipped count is released with std 4/20 (Andrew et al. 2021, section 3).
    z = sigma if name == "dpfedavg" else (sigma**-2 - (2 * 4 / 20) ** -2) ** -0.5
    std = z * clip / 4
    assert float(new.std()) == pytest.approx(std, rel=0.05)  # 7 standard errors at 10,000
    # Equal weights: every coordinate is the mean of four clipped deltas plus noise; the
    # tolerance is 5 standard errors of a mean of 10,000 draws, well below the signal, so a
    # zero-mean (or unclipped) update fails.
    per_coordinate = clip / np.sqrt(size)
    tolerance = 5 * std / np.sqrt(size)
    assert tolerance < 0.7 * per_coordinate
    assert abs(float(new.mean()) - per_coordinate) < tolerance
    if name == "dpfedavg-adaptive":  # all clipped, above the target quantile: the norm shrinks
        assert strategy.privacy.clipping_norm < 0.1


def test_registry_names_and_options():
    names = known_strategies()
    for name in ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                 "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg",
                 "dpfedavg", "dpfedavg-adaptive"]:
        assert name in names
    assert strategy_options("fedadam")["eta"] == 0.1
    assert strategy_options("fedadam", {"eta": 1})["eta"] == 1.0
    assert build_strategy("fedprox", {"proximal_mu": 0.5}).client_options == {"proximal_mu": 0.5}
    with pytest.raises(ValueError, match="allowed: max_norm_factor, eta"):
        strategy_options("fedadam", {"lr": 0.1})
    with pytest.raises(ValueError, match="integer"):
        strategy_options("krum", {"num_malicious": 1.5})
    with pytest.raises(ValueError, match="fedavg"):
        build_strategy("fedsomething")


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_strategy_answers_in_the_models_dtype(device, dtype):
    """A float64 model is aggregated and stepped in float64 (FlowerStrategy relies on it),
    on numpy and on array-api-strict, with no cross-library dtype comparison."""
    import warnings

    rng = np.random.default_rng(0)
    for name in known_strategies():
        options = {"max_norm_factor": 0.0}
        if name.startswith("dp"):
            options["noise_multiplier"] = 0.0
        context = StrategyContext(backend=select_backend(device))
        strategy = build_strategy(name, options, context)
        global_vector = rng.standard_normal(50).astype(dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            aggregation = strategy.start_round(global_vector, 1)
            updates = [
                ClientUpdate(3, 0.5, 0.0, 0, values=(global_vector + 0.1 * i).astype(dtype))
                for i in range(7)
            ]
            assert aggregation.offer_all(updates) == [None] * 7
            assert aggregation.finish().dtype == dtype, name
