"""Scenario files: the shipped ones load; every user error is one line naming file and key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from aggregator.strategies import known_strategies
from fedcore.models import MODELS
from simulations.prepare import client_partitions, load_data, prepare_scenario
from simulations.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_from_dict,
)

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"
QUICKSTART = SIMULATIONS / "quickstart.toml"

BASE: dict[str, Any] = {
    "name": "t",
    "seed": 1,
    "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "mlp", "hidden": [32]},
    "federation": {"num_clients": 20, "clients_per_round": 5, "rounds": 3},
    "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1, "momentum": 0.9},
}
DELETE = object()


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with dotted keys set (or removed with DELETE)."""
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = d
        for part in path:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return d


def test_quickstart_loads() -> None:
    s = load_scenario(QUICKSTART)
    assert s.name == "quickstart" and s.seed == 42
    assert (s.data.dataset, s.data.partition, s.data.alpha) == ("digits", "dirichlet", 0.5)
    assert (s.model.name, s.model.hidden) == ("mlp", [64])
    assert (s.federation.num_clients, s.federation.rounds, s.federation.strategy) == (
        20,
        20,
        "fedavg",
    )
    assert s.federation.clients_per_round <= s.federation.num_clients
    data = load_data(s)
    parts = client_partitions(s, data)
    assert len(parts) == 20 and sum(len(p) for p in parts) == data.num_train


@pytest.mark.parametrize("path", sorted((SIMULATIONS / "examples").glob("*.toml")), ids=str)
def test_examples_load_and_partition(path: Path) -> None:
    s = load_scenario(path)
    data = load_data(s)
    parts = client_partitions(s, data)
    assert len(parts) == s.federation.num_clients
    assert sum(len(p) for p in parts) == data.num_train


def test_model_dump_is_json_and_round_trips() -> None:
    s = load_scenario(QUICKSTART)
    dumped = json.loads(json.dumps(s.model_dump()))
    assert Scenario.model_validate(dumped) == s
    assert scenario_from_dict(dumped) == s


def test_defaults_are_filled_in() -> None:
    s = scenario_from_dict(_with({"train": DELETE, "federation.clients_per_round": DELETE}))
    assert s.federation.clients_per_round == 20
    assert s.train.local_epochs == 1 and s.train.momentum == 0.0
    assert s.data.test_fraction == 0.2 and s.data.min_size == 10
    logreg = scenario_from_dict(_with({"model": {"name": "logreg"}}))
    assert logreg.model.hidden is None and logreg.model.hyperparameters == {}
    assert scenario_from_dict(_with({"model": {"name": "mlp"}})).model.hidden == [64]


def test_ints_are_accepted_where_floats_belong() -> None:
    s = scenario_from_dict(_with({"train.learning_rate": 1, "data.alpha": 2}))
    assert s.train.learning_rate == 1.0 and s.data.alpha == 2.0


def test_synthetic_generators_default_to_the_federation_size() -> None:
    s = scenario_from_dict(_with({"data": {"dataset": "synthetic", "partition": "natural"}}))
    assert s.data.synthetic is not None and s.data.synthetic.num_clients == 20
    assert s.data.options["num_clients"] == 20
    data = load_data(s)
    assert data.groups_train is not None
    assert len(client_partitions(s, data)) == 20


def test_known_names() -> None:
    assert {"mlp", "logreg"} <= set(MODELS) and {"fedavg", "fedadam"} <= set(known_strategies())


# (changes to BASE, the exact "key: message" expected after "<source>: ") -- or a prefix of it.
ERRORS = [
    # missing keys and sections
    ({"federation.rounds": DELETE}, "federation.rounds: missing required key"),
    ({"data": DELETE}, "data: missing required key"),
    ({"name": DELETE}, "name: missing required key"),
    ({"data.alpha": DELETE}, "data.alpha: missing required key (the dirichlet partition needs it)"),
    # wrong types
    ({"federation.rounds": "ten"}, "federation.rounds: expected an integer, got 'ten'"),
    ({"federation.num_clients": True}, "federation.num_clients: expected an integer, got true"),
    ({"train.batch_size": 32.0}, "train.batch_size: expected an integer, got 32.0"),
    ({"train.learning_rate": "fast"}, "train.learning_rate: expected a number, got 'fast'"),
    ({"name": 3}, "name: expected a string, got 3"),
    ({"model.hidden": ["a"]}, "model.hidden[0]: expected an integer, got 'a'"),
    ({"model.hidden": 64}, "model.hidden: expected a list, got 64"),
    ({"model": "mlp"}, "model: expected a table, got 'mlp'"),
    # unknown keys
    ({"seeds": 1}, "seeds: unknown key (allowed: name, seed, data, model, federation, train,"),
    ({"train.lr": 0.1}, "train.lr: unknown key (allowed: local_epochs, batch_size,"),
    # a misspelled table is named, not the required one it leaves missing
    (
        {"federaton": BASE["federation"], "federation": DELETE},
        "federaton: unknown table (allowed: name, seed, data, model, federation, train,",
    ),
    (
        {
            "data.dataset": "synthetic",
            "data.partition": "iid",
            "data.alpha": DELETE,
            "data.synthetic": {"gamma": 1.0},
        },
        "data.synthetic.gamma: unknown key (allowed: num_clients, alpha, beta, samples_per_client, "
        "shared_task)",
    ),
    # unknown names
    (
        {"data.dataset": "mnist"},
        "data.dataset: unknown dataset 'mnist' "
        "(known: digits, files, mnist5k, shakespeare, synthetic)",
    ),
    ({"model.name": "resnet"}, f"model.name: unknown model 'resnet' (known: {', '.join(MODELS)})"),
    (
        {"federation.strategy": "fedmagic"},
        "federation.strategy: unknown strategy 'fedmagic' (known: bulyan, dpfedavg",
    ),
    (
        {"data.partition": "shards"},
        "data.partition: unknown partition 'shards' (known: iid, dirichlet, natural)",
    ),
    # relations between keys
    (
        {"federation.clients_per_round": 30},
        "federation.clients_per_round: 30 is more than federation.num_clients (20)",
    ),
    (
        {"federation.num_clients": 5000, "data.partition": "iid", "data.alpha": DELETE},
        "federation.num_clients: more clients than examples: 5000 clients, but 'digits' has "
        "1438 training examples",
    ),
    (
        {"federation.num_clients": 200},
        "data.min_size: 200 clients x 10 examples is more than the 1438 training examples",
    ),
    ({"data.partition": "iid"}, "data.alpha: only used by the dirichlet partition, not 'iid'"),
    (
        {"data.partition": "iid", "data.alpha": DELETE, "data.min_size": 3},
        "data.min_size: only used by the dirichlet partition, not 'iid'",
    ),
    (
        {"data.partition": "natural", "data.alpha": DELETE},
        "data.partition: 'natural' needs a dataset with its own per-client split (synthetic, "
        "shakespeare, files or a loader), not 'digits'",
    ),
    ({"data.synthetic": {"alpha": 1.0}}, "data.synthetic: only for dataset 'synthetic', not"),
    (
        {"data": {"dataset": "synthetic", "partition": "natural", "synthetic": {"num_clients": 9}}},
        "data.synthetic.num_clients: the natural partition needs one generator per client",
    ),
    (
        {"model": {"name": "logreg", "hidden": [8]}},
        "model.hidden: not used by model 'logreg' (it has none)",
    ),
    ({"model.hidden": []}, "model.hidden: mlp needs at least one hidden layer"),
    # ranges
    ({"federation.rounds": 0}, "federation.rounds: must be > 0, got 0"),
    ({"train.learning_rate": -0.1}, "train.learning_rate: must be > 0, got -0.1"),
    ({"data.alpha": 0}, "data.alpha: must be > 0, got 0"),
    ({"data.test_fraction": 1.5}, "data.test_fraction: must be < 1, got 1.5"),
    ({"train.momentum": 1.0}, "train.momentum: must be < 1, got 1.0"),
    ({"seed": -1}, "seed: must be >= 0, got -1"),
    ({"model.hidden": [64, 0]}, "model.hidden[1]: must be > 0, got 0"),
    ({"name": ""}, "name: must not be empty"),
]


def checked(raw: dict[str, Any]) -> None:
    """Validate the file (no data read), then prepare it: the two checks a run makes."""
    prepare_scenario(scenario_from_dict(raw, source="s.toml"), source="s.toml")


def test_validating_reads_no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing has no side effects: the data-dependent errors come from preparing."""
    import simulations.prepare as prepare

    def no_data(**kwargs: Any) -> None:
        raise AssertionError("validation loaded data")

    import simulations.datasets as datasets

    monkeypatch.setattr(prepare, "load_dataset", no_data)
    monkeypatch.setattr(datasets, "load_dataset", no_data)
    too_many = _with(
        {"federation.num_clients": 5000, "data.partition": "iid", "data.alpha": DELETE}
    )
    assert scenario_from_dict(too_many).federation.num_clients == 5000
    with pytest.raises(AssertionError, match="validation loaded data"):
        prepare_scenario(scenario_from_dict(too_many))


def test_strategy_settings_are_not_set_in_the_train_table() -> None:
    with pytest.raises(ScenarioError, match=r"s.toml: train.proximal_mu: set by the strategy"):
        scenario_from_dict(_with({"train.proximal_mu": 0.1}), source="s.toml")


@pytest.mark.parametrize(("changes", "expected"), ERRORS, ids=[e[1].split(":")[0] for e in ERRORS])
def test_errors_are_one_line_and_name_the_key(changes, expected) -> None:
    with pytest.raises(ScenarioError) as caught:
        checked(_with(changes))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"s.toml: {expected}"), message


def test_several_errors_report_the_first_and_count_the_rest() -> None:
    with pytest.raises(ScenarioError, match=r"^s.toml: federation.rounds: .* \(and 1 more\)$"):
        scenario_from_dict(_with({"federation.rounds": "x", "train.batch_size": "y"}), "s.toml")


def test_not_a_table() -> None:
    with pytest.raises(ScenarioError, match="^s.toml: expected a table of keys, got a list$"):
        scenario_from_dict([1, 2], source="s.toml")  # type: ignore[arg-type]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "quickstart.toml"
    bad.write_text(QUICKSTART.read_text().replace("rounds = 20", 'rounds = "ten"'))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)
    assert str(caught.value) == f"{bad}: federation.rounds: expected an integer, got 'ten'"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match=f"^{missing}: no such file$"):
        load_scenario(missing)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)


@pytest.mark.parametrize(
    "text",
    ['name = "x"\nseed = 1\n[data\ndataset = "digits"\n', 'name = "x"\nseed = 1\nrounds = \n'],
)
def test_toml_syntax_error_gives_the_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid TOML: ") and "line 3" in message, message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ScenarioError, match="invalid TOML"):
        load_scenario(path)
