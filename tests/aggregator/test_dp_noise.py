"""Issue 13, finding 3: central DP noise no participant can regenerate, calibrated to the mean."""

import numpy as np
import pytest

from aggregator.strategies import StrategyContext, build_strategy
from aggregator.updates import ClientUpdate

SIZE = 20_000
SEED = 1234  # the scenario seed: every client receives it


def dense(value, n=10):
    return ClientUpdate(n, 1.0, 0.0, SIZE * 4, values=np.full(SIZE, value, np.float32))


def one_round(strategy, accepted=4, round_number=1):
    aggregation = strategy.start_round(np.zeros(SIZE, np.float32), round_number)
    for k in range(accepted):
        aggregation.offer(dense(5.0 * (k + 1)))
    return aggregation.finish()


def dp(seed=SEED, per_round=4):
    options = {"noise_multiplier": 0.5, "clipping_norm": 1.0, "max_norm_factor": 0.0}
    context = StrategyContext(num_clients=100, clients_per_round=per_round, seed=seed)
    return build_strategy("dpfedavg", options, context)


def test_noise_is_not_derived_from_the_scenario_seed():
    a, b = one_round(dp()), one_round(dp())
    assert not np.array_equal(a, b)  # same scenario seed, different noise
    # the attack of the finding: regenerate the noise from the seed and subtract it
    clean = np.full(SIZE, 1.0 / np.sqrt(SIZE), np.float32)
    guessed = np.random.default_rng([SEED, 0xD9]).normal(0.0, 0.5 / 4, SIZE).astype(np.float32)
    assert np.abs((a - guessed) - clean).max() > 0.1


def test_a_resumed_strategy_draws_exactly_the_noise_it_would_have():
    original = dp()
    one_round(original, round_number=1)
    resumed = dp(seed=0)
    resumed.load_state_dict(original.state_dict())
    np.testing.assert_array_equal(one_round(resumed, 4, 2), one_round(original, 4, 2))


@pytest.mark.parametrize("accepted", [2, 3])
def test_noise_is_calibrated_to_the_number_actually_averaged(accepted):
    strategy = dp(per_round=4)
    new = one_round(strategy, accepted)
    mean = 1.0 / np.sqrt(SIZE)  # every delta clipped to norm 1, equal weights
    assert float(new.std()) == pytest.approx(0.5 * 1.0 / accepted, rel=0.05)
    assert abs(float(new.mean()) - mean) < 0.05
