"""The same scenario on Flower's simulation runtime (Ray) gives the in-process numbers."""

import numpy as np
import pytest

from simulations.lifecycle import run_scenario
from tests.simulations.test_harness import small_scenario

pytest.importorskip("ray", reason="Flower's simulation runtime needs fedcore[sim]")


def test_flower_backend_matches_inprocess():
    scenario = small_scenario(rounds=3)
    local = run_scenario(scenario, "inprocess")
    flower = run_scenario(scenario, "flower")
    assert flower.final_accuracy > 0.5
    np.testing.assert_allclose(flower.final, local.final, rtol=1e-5, atol=1e-6)
    assert [r.train_loss for r in flower.rounds] == pytest.approx(
        [r.train_loss for r in local.rounds], rel=1e-5
    )
