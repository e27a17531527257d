"""``--set KEY=VALUE`` parsing and laying over a scenario's tables."""

import pytest

from simulations.overrides import OverrideError, apply_overrides, parse_override


def test_values_are_toml_or_bare_words():
    assert parse_override("train.local_epochs=2") == (["train", "local_epochs"], 2)
    assert parse_override("train.learning_rate = 0.5") == (["train", "learning_rate"], 0.5)
    assert parse_override("federation.secagg=true")[1] is True
    assert parse_override("model.hidden=[32, 16]")[1] == [32, 16]
    assert parse_override("federation.strategy=fedadam")[1] == "fedadam"
    assert parse_override('name="two words"')[1] == "two words"


def test_overrides_lay_over_a_copy():
    raw = {"train": {"local_epochs": 1}, "federation": {"rounds": 3}}
    out = apply_overrides(raw, ["train.local_epochs=4", "federation.strategy_options.eta=0.1"])
    assert out["train"]["local_epochs"] == 4 and raw["train"]["local_epochs"] == 1
    assert out["federation"] == {"rounds": 3, "strategy_options": {"eta": 0.1}}


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("local_epochs", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("a..b=1", "expected KEY=VALUE"),
        ("train.x=[1,", "is not a TOML value"),
        ("train.local_epochs.x=1", "train.local_epochs is a value, not a table"),
    ],
)
def test_bad_items_are_one_line(item, needle):
    with pytest.raises(OverrideError, match=needle):
        apply_overrides({"train": {"local_epochs": 1}}, [item])
