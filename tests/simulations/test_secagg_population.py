"""SecAgg+ through the same round pipeline as a plain round: a simulated population's
over-selection, deadline and drop-outs, and every server optimizer (FedAdam here)."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.harness import simulate
from simulations.prepare import prepare_scenario
from simulations.scenario import scenario_from_dict
from tests.simulations.test_population import scenario as population_scenario
from tests.simulations.test_secagg_scenario import scenario as small_secagg_scenario


def _population(secagg: bool) -> dict:
    raw = population_scenario(
        devices={"android-mid": 90, "rpi-zero-2w": 10},
        dropout=0.05,
        over_selection=1.2,
        deadline_s=0.003,  # android-mid trains this logreg in ~1.7 ms, rpi-zero-2w in ~4.7 ms
    )
    raw["federation"].update(rounds=5, clients_per_round=10)
    if secagg:  # t tolerates the over-selected 2 of 12 and 20 % more leaving
        raw["secagg"] = {"dropout": 0.2}
    return raw


def _kind(reason: str | None) -> str:
    for kind in ("missed the deadline", "dropped out", "over-selected"):
        if reason and kind in reason:
            return kind
    return "accepted" if reason is None else reason


def test_secagg_honours_over_selection_deadline_and_dropouts_of_a_population():
    plain = simulate(prepare_scenario(scenario_from_dict(_population(False))))
    secure = simulate(prepare_scenario(scenario_from_dict(_population(True))))
    seen: set[str] = set()
    for a, b in zip(plain.rounds, secure.rounds, strict=True):
        # the same clients are asked, and each fares the same way, plain or secure
        fate_a = {c.client_id: _kind(c.reason) for c in a.clients}
        fate_b = {c.client_id: _kind(c.reason) for c in b.clients}
        assert fate_a == fate_b
        assert b.num_accepted <= 10 < b.num_selected == 12  # k = 10 of ceil(10 * 1.2)
        seen |= set(fate_b.values())
        # the simulated clock runs the same way (the masked reply is timed like a train reply)
        assert b.metrics["sim_round_s"] == pytest.approx(a.metrics["sim_round_s"], rel=0.05)
    assert {"accepted", "missed the deadline", "dropped out", "over-selected"} <= seen
    # the same updates summed securely: the model matches up to fixed-point rounding
    assert np.abs(secure.final - plain.final).max() < 1e-3
    assert secure.final_accuracy == pytest.approx(plain.final_accuracy, abs=0.01)


def test_secagg_with_fedadam_steps_the_server_optimizer():
    fed = {"rounds": 3, "strategy": "fedadam"}
    plain = simulate(prepare_scenario(small_secagg_scenario(fed)))
    secure = simulate(prepare_scenario(small_secagg_scenario({**fed, "secagg": True})))
    fedavg = simulate(prepare_scenario(small_secagg_scenario({"rounds": 3, "secagg": True})))
    assert np.abs(secure.final - plain.final).max() < 1e-3  # FedAdam's step, not FedAvg's
    assert np.abs(secure.final - fedavg.final).max() > 1e-2
    assert set(secure.rounds[-1].server_state) == set(plain.rounds[-1].server_state) != set()
