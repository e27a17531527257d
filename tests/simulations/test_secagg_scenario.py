"""Secure aggregation from scenario files: switches, checks, and the same model as without."""

from pathlib import Path

import numpy as np
import pytest

from simulations.lifecycle import run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import ScenarioError, load_scenario, scenario_from_dict, with_secagg
from simulations.secagg_section import secagg_config, secagg_enabled
from tests.simulations.test_harness import small_scenario

QUICKSTART = Path(__file__).parents[2] / "simulations" / "quickstart_secagg.toml"


def scenario(federation=None, secagg=None):
    raw = small_scenario().model_dump(mode="json")
    del raw["federation"]["secagg"], raw["secagg"]
    raw["federation"].update(federation or {})
    if secagg is not None:
        raw["secagg"] = secagg
    return scenario_from_dict(raw, source="s.toml")


def test_switches_and_defaults():
    assert not secagg_enabled(scenario())
    assert secagg_enabled(scenario({"secagg": True}))
    off = {"max_norm_factor": 0.0}  # the guard off on purpose: nothing to refuse
    assert secagg_enabled(scenario({"secagg": True, "strategy_options": off}))
    on = scenario(secagg={"k": 3})  # the table alone switches it on, and the dump says so
    assert on.federation.secagg and scenario_from_dict(on.model_dump(mode="json")) == on
    quick = load_scenario(QUICKSTART)
    prepared = prepare_scenario(quick)
    largest = max(len(p) for p in prepared.loader.parts)
    assert prepared.config.secagg == secagg_config(quick, largest)
    assert prepared.config.secagg.max_weight == largest
    assert not secagg_enabled(with_secagg(quick, False))
    assert secagg_enabled(with_secagg(load_scenario(QUICKSTART.with_name("quickstart.toml")), True))


@pytest.mark.parametrize(
    "federation,secagg,message",
    [
        ({"secagg": True, "strategy": "krum"}, None, "federation.strategy: 'krum' needs"),
        ({"secagg": True, "compression": "int8"}, None, "federation.compression"),
        (
            {"secagg": True, "strategy_options": {"max_norm_factor": 5.0}},
            None,
            "federation.strategy_options.max_norm_factor: the norm guard judges single updates",
        ),
        ({"secagg": False}, {"k": 3}, "federation.secagg: false, but a [secagg] table"),
        ({}, {"k": 2, "t": 3}, "secagg.t: 3 is more than secagg.k (2)"),
        ({}, {"dropout": 0.5, "corruption": 0.4}, "secagg: n = 4 clients cannot tolerate"),
        ({}, {"kk": 2}, "secagg.kk: unknown key"),
    ],
)
def test_misfits_name_their_key(federation, secagg, message):
    with pytest.raises(ScenarioError) as caught:
        scenario(federation, secagg)
    assert f"s.toml: {message}" in str(caught.value)


def test_secure_run_learns_the_same_model():
    plain = run_scenario(small_scenario(rounds=3), "inprocess")
    secure = run_scenario(scenario({"rounds": 3, "secagg": True}), "inprocess")
    assert secure.final_accuracy == pytest.approx(plain.final_accuracy, abs=0.01)
    np.testing.assert_allclose(secure.final, plain.final, atol=1e-4)
    assert [r.train_loss for r in secure.rounds] == pytest.approx(
        [r.train_loss for r in plain.rounds], abs=1e-4
    )


def test_identities_run_the_consistency_check_and_learn_the_bit_identical_model(monkeypatch):
    from client_runtime import consistency

    checks = []
    original = consistency.check_unmask
    monkeypatch.setattr(consistency, "check_unmask", lambda *a: checks.append(a) or original(*a))
    unchecked = run_scenario(scenario({"rounds": 2}, {"k": 3}), "inprocess")
    assert not checks
    checked = run_scenario(scenario({"rounds": 2}, {"k": 3, "identities": True}), "inprocess")
    assert len(checks) == 2 * 4  # every client of both rounds checked before unmasking
    assert checked.final.tobytes() == unchecked.final.tobytes()
    assert all(r.num_accepted == unchecked.rounds[0].num_accepted for r in checked.rounds)
    assert secagg_config(scenario(secagg={"identities": True})).require_identities
