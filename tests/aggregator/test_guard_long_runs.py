"""The default norm guard never refuses an honest client over long runs of the shipped
scenarios (the quickstart's honest norms reach 13 x the recent median in 100 rounds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.lifecycle import run_scenario
from simulations.scenario import load_scenario

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"
SHIPPED = [
    "quickstart.toml",
    "phones_label_skew.toml",
    "examples/natural_synthetic.toml",
    "examples/iid_synthetic.toml",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_an_honest_federation_never_trips_the_guard(name):
    scenario = load_scenario(SIMULATIONS / name)
    fed = scenario.federation.model_copy(update={"rounds": 100})
    result = run_scenario(scenario.model_copy(update={"federation": fed}))
    refused = [
        (r.number, c.client_id, c.reason)
        for r in result.rounds
        for c in r.clients
        if c.reason and "norm" in c.reason
    ]
    assert refused == []
