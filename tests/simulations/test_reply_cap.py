"""Issue 13, finding 1: the cap on examples one reply may count is a scenario setting."""

from aggregator.decode import DEFAULT_MAX_EXAMPLES
from simulations.prepare import prepare_scenario
from simulations.scenario import scenario_from_dict

RAW = {
    "name": "cap",
    "data": {"dataset": "digits", "partition": "iid"},
    "model": {"name": "logreg"},
    "federation": {"num_clients": 4, "rounds": 1},
}


def test_the_reply_cap_comes_from_the_scenario():
    assert prepare_scenario(scenario_from_dict(RAW)).config.max_examples == DEFAULT_MAX_EXAMPLES
    raw = {**RAW, "federation": {**RAW["federation"], "max_examples": 50}}
    assert prepare_scenario(scenario_from_dict(raw)).config.max_examples == 50
