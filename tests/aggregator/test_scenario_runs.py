"""Strategies and compression chosen in a scenario run end to end and are stored."""

import pytest

from aggregator.store import Store
from simulations.lifecycle import run_scenario
from simulations.scenario import ScenarioError, scenario_from_dict


def scenario(**federation):
    return scenario_from_dict(
        {
            "name": "small",
            "seed": 3,
            "data": {"dataset": "digits", "partition": "iid"},
            "model": {"name": "mlp", "hidden": [32]},
            "federation": {"num_clients": 6, "clients_per_round": 4, "rounds": 3, **federation},
            "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05, "momentum": 0.9},
        }
    )


@pytest.mark.parametrize(
    "codec, options, shrink", [("int8", {}, 3.3), ("int4", {}, 6), ("topk", {"ratio": 0.1}, 4)]
)
def test_compressed_runs_learn_and_record_bytes_on_the_wire(tmp_path, codec, options, shrink):
    store = Store(str(tmp_path / "runs.db"))
    result = run_scenario(scenario(compression=codec, compression_options=options), store=store)
    assert result.final_accuracy > 0.7  # chance is 0.1
    for outcome in result.rounds:
        assert outcome.num_accepted == 4
        assert outcome.bytes_down / outcome.bytes_up > shrink
    stored = store.get_run(result.run_id).rounds[-1]
    assert stored.bytes_up == result.rounds[-1].bytes_up > 0
    assert all(c.bytes_up > 0 and c.bytes_down > 0 for c in stored.clients)


@pytest.mark.parametrize(
    "strategy, options",
    [("fedadam", {"eta": 0.1}), ("fedprox", {"proximal_mu": 0.1}), ("krum", {}),
     ("dpfedavg", {"noise_multiplier": 0.01, "clipping_norm": 10.0})],
)
def test_named_strategies_run_from_a_scenario(strategy, options):
    result = run_scenario(scenario(strategy=strategy, strategy_options=options))
    assert result.final_accuracy > 0.5
    if strategy == "dpfedavg":
        assert 0 < result.rounds[0].epsilon < result.rounds[1].epsilon


def test_bad_strategy_options_name_the_key():
    with pytest.raises(ScenarioError, match="federation.strategy_options: unknown option 'lr'"):
        scenario(strategy="fedadam", strategy_options={"lr": 0.1})
    with pytest.raises(ScenarioError, match="federation.compression: unknown compression"):
        scenario(compression="zip")
