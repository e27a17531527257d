"""Scenarios with the cnn and lstm models and the mnist5k / shakespeare datasets."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fedcore.models import MODELS, build_model
from simulations.prepare import build_scenario_model, load_data, prepare_scenario
from simulations.scenario import ScenarioError, model_keys, scenario_from_dict

CNN: dict[str, Any] = {
    "name": "c",
    "seed": 2,
    "data": {"dataset": "mnist5k", "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "cnn", "channels": [4, 8], "hidden": 16},
    "federation": {"num_clients": 10, "rounds": 2},
}
LSTM: dict[str, Any] = {
    "name": "l",
    "data": {
        "dataset": "shakespeare",
        "partition": "natural",
        "shakespeare": {"vocab_size": 300, "seq_len": 10},
    },
    "model": {"name": "lstm", "embed_dim": 16, "hidden": 32},
    "federation": {"num_clients": 4, "rounds": 2},
}


def _with(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with whole sections replaced."""
    return {**copy.deepcopy(base), **sections}


def test_model_names_and_keys_come_from_the_registry() -> None:
    assert {"mlp", "logreg", "cnn", "lstm"} <= set(MODELS)
    assert model_keys("mlp") == ("hidden",) and model_keys("logreg") == ()
    assert set(model_keys("cnn")) == {"channels", "hidden"}
    assert set(model_keys("lstm")) == {"embed_dim", "hidden"}


def test_cnn_scenario_is_sized_from_the_images() -> None:
    s = scenario_from_dict(CNN)
    assert s.model.channels == [4, 8] and s.model.hidden == [16] and s.model.embed_dim is None
    spec = build_scenario_model(s, load_data(s))[0]
    assert spec.name == "cnn"
    assert spec.kwargs == {
        "num_classes": 10,
        "input_dim": 784,
        "input_shape": [28, 28, 1],
        "seed": 2,
        "channels": [4, 8],
        "hidden": 16,
    }
    model = build_model(spec.name, **spec.kwargs)
    assert model.num_parameters() > 0


def test_cnn_defaults_come_from_the_builder_and_are_filled_in() -> None:
    s = scenario_from_dict(_with(CNN, model={"name": "cnn"}))
    assert s.model.channels == [32, 64] and s.model.hidden == [128]
    assert scenario_from_dict(s.model_dump()) == s  # a stored scenario says what was built


def test_lstm_scenario_is_sized_from_the_vocabulary() -> None:
    s = scenario_from_dict(LSTM)
    assert s.model.hidden == [32] and s.model.embed_dim == 16
    assert s.data.options == {"num_clients": 4, "vocab_size": 300, "seq_len": 10}
    spec = build_scenario_model(s, load_data(s))[0]
    assert spec.kwargs == {"vocab_size": 300, "seed": 0, "embed_dim": 16, "hidden": 32}
    same = _with(LSTM, model={"name": "lstm", "embed_dim": 16, "hidden": [32]})
    assert scenario_from_dict(same) == s
    assert scenario_from_dict(s.model_dump()) == s


def test_mlp_runs_on_mnist5k_rows() -> None:
    s = scenario_from_dict(_with(CNN, model={"name": "mlp", "hidden": [32]}))
    assert build_scenario_model(s, load_data(s))[0].kwargs["input_dim"] == 784


# (base, changes per section, expected "key: message" after "s.toml: ")
ERRORS = [
    (CNN, {"data": {"dataset": "digits"}, "model": {"name": "lstm"}},
     "model.name: 'lstm' is a language model: it needs token sequences (e.g. dataset "
     "'shakespeare'), not 'digits'"),
    (LSTM, {"model": {"name": "cnn"}},
     "model.name: 'cnn' predicts a label per example, 'shakespeare' a word per position "
     "(use lstm or "),
    (LSTM, {"model": {"name": "mlp"}}, "model.name: 'mlp' predicts a label per example"),
    (CNN, {"data": {"dataset": "synthetic", "partition": "iid", "alpha": None},
           "model": {"name": "cnn"}},
     "model.name: 'cnn' needs images (input_shape height, width, channels), 'synthetic' has "
     "rows of shape (60,)"),
    (CNN, {"model": {"channels": [8]}},
     "model.channels: must name the two conv blocks' widths, got [8]"),
    (CNN, {"model": {"channels": []}}, "model.channels: cnn needs at least one conv block"),
    (CNN, {"model": {"channels": "wide"}}, "model.channels: expected a list, got 'wide'"),
    (CNN, {"model": {"hidden": [8, 16]}}, "model.hidden: cnn takes one width (e.g. hidden = 8)"),
    (CNN, {"model": {"embed_dim": 8}},
     "model.embed_dim: not used by model 'cnn' (its keys: hidden, channels)"),
    (LSTM, {"model": {"channels": [8, 8]}},
     "model.channels: not used by model 'lstm' (its keys: hidden, embed_dim)"),
    (LSTM, {"model": {"hidden": 0}}, "model.hidden: must be > 0, got 0"),
    (LSTM, {"model": {"embed_dim": 0}}, "model.embed_dim: must be > 0, got 0"),
    (LSTM, {"model": {"embed_dim": "big"}}, "model.embed_dim: expected an integer, got 'big'"),
    (LSTM, {"data": {"partition": "dirichlet", "alpha": 0.5}},
     "data.partition: 'dirichlet' skews class labels; 'shakespeare' has a target per word "
     "(use iid or natural)"),
    (LSTM, {"data": {"shakespeare": {"vocab_size": 10**6}}},
     "data.shakespeare.vocab_size: must be in [3, "),
    (LSTM, {"data": {"shakespeare": {"vocab_size": 2}}},
     "data.shakespeare.vocab_size: must be >= 3, got 2"),
    (LSTM, {"data": {"shakespeare": {"seq_len": 0}}}, "data.shakespeare.seq_len: must be > 0"),
    (LSTM, {"data": {"shakespeare": {"num_clients": 3}}},
     "data.shakespeare.num_clients: the natural partition needs one role per client: 3 != "
     "federation.num_clients (4)"),
    (LSTM, {"data": {"shakespeare": {"num_clients": 900}, "partition": "iid"}},
     "data.shakespeare.num_clients: must be <= "),
    (LSTM, {"data": {"shakespeare": {"words": 3}}},
     "data.shakespeare.words: unknown key (allowed: num_clients, vocab_size, seq_len)"),
    (CNN, {"data": {"shakespeare": {"seq_len": 3}}},
     "data.shakespeare: only for dataset 'shakespeare', not 'mnist5k'"),
]  # fmt: skip


@pytest.mark.parametrize(("base", "changes", "expected"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_are_one_line_and_name_the_key(base, changes, expected) -> None:
    raw = copy.deepcopy(base)
    for section, values in changes.items():
        raw[section] = {k: v for k, v in {**raw[section], **values}.items() if v is not None}
    if changes.get("model", {}).get("name") not in (None, base["model"]["name"]):
        raw["model"] = changes["model"]
    with pytest.raises(ScenarioError) as caught:
        prepare_scenario(scenario_from_dict(raw, source="s.toml"), source="s.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"s.toml: {expected}"), message
