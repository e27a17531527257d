"""The shipped quickstart, as shipped: 97.21 % (349 of the 359 held-out images) after 20
rounds, with and without SecAgg+, and the same model bit for bit on both simulation runtimes
(in-process and Flower's, on Ray).

The accuracy is allowed one image either way: training runs BLAS matrix products, whose last
bits may differ on another CPU. On one machine both runtimes give the same bits.
"""

from pathlib import Path

import numpy as np
import pytest

from simulations.harness import simulate
from simulations.prepare import prepare_scenario
from simulations.scenario import load_scenario

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"
TEST_IMAGES = 359
ACCURACY = 349 / TEST_IMAGES  # 97.21 %

pytestmark = pytest.mark.slow  # 20 rounds, twice on Ray


def test_the_quickstart_reaches_its_model_on_both_runtimes_with_and_without_secagg():
    pytest.importorskip("ray", reason="Flower's simulation runtime needs fedcore[sim]")
    finals = {}
    for name in ("quickstart.toml", "quickstart_secagg.toml"):
        scenario = load_scenario(SIMULATIONS / name)
        local = simulate(prepare_scenario(scenario), "inprocess")
        flower = simulate(prepare_scenario(scenario), "flower")
        assert local.final_accuracy == pytest.approx(ACCURACY, abs=1.01 / TEST_IMAGES), name
        np.testing.assert_array_equal(flower.final, local.final)  # bit for bit
        assert flower.final_accuracy == local.final_accuracy
        assert all(c.accepted for r in local.rounds for c in r.clients)  # no honest refusal
        finals[name] = local
    plain, secure = finals["quickstart.toml"], finals["quickstart_secagg.toml"]
    assert secure.final_accuracy == plain.final_accuracy
    # fixed-point sums of the same updates: close to the plain mean, not equal to it
    np.testing.assert_allclose(secure.final, plain.final, atol=1e-3)
    assert not np.array_equal(secure.final, plain.final)
