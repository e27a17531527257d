"""The same scenario on Flower's simulation runtime (Ray) gives the in-process numbers."""

import numpy as np
import pytest

from simulations.lifecycle import run_scenario
from tests.simulations.test_harness import small_scenario

pytest.importorskip("ray", reason="Flower's simulation runtime needs fedcore[sim]")
pytestmark = pytest.mark.slow  # Ray


def test_flower_runtime_matches_inprocess():
    scenario = small_scenario(rounds=3)
    local = run_scenario(scenario, "inprocess")
    flower = run_scenario(scenario, "flower")
    assert flower.final_accuracy > 0.5
    np.testing.assert_allclose(flower.final, local.final, rtol=1e-5, atol=1e-6)
    assert [r.train_loss for r in flower.rounds] == pytest.approx(
        [r.train_loss for r in local.rounds], rel=1e-5
    )


def test_population_scenario_runs_on_flower_with_the_inprocess_outcomes():
    from simulations.scenario import scenario_from_dict
    from tests.simulations.test_population import scenario

    raw = scenario(size=12, dropout=0.2, over_selection=1.5, deadline_s=1e6)
    raw["federation"]["clients_per_round"] = 4
    spec = scenario_from_dict(raw)
    local, flower = run_scenario(spec, "inprocess"), run_scenario(spec, "flower")

    def seen(result):
        return [
            [(c.client_id, c.device_class, c.accepted, c.reason) for c in r.clients]
            for r in result.rounds
        ]

    assert seen(flower) == seen(local)
    assert any(c.reason for r in local.rounds for c in r.clients)
    np.testing.assert_allclose(flower.final, local.final, rtol=1e-5, atol=1e-6)
    for a, b in zip(local.rounds, flower.rounds, strict=True):
        assert b.metrics["sim_clock_s"] == pytest.approx(a.metrics["sim_clock_s"])
        assert b.metrics["energy_j"] == pytest.approx(a.metrics["energy_j"])
