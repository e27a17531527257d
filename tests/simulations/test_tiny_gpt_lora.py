"""The tiny-GPT LoRA example: a 512 MB board fine-tunes the pretrained base under its memory
budget, only the adapters travel, and the test perplexity goes down."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from device_profiles import get_profile
from fedcore.evaluate import perplexity
from fedcore.models import build_model
from fedcore.nn.lora import merge_lora
from simulations.lifecycle import run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import ScenarioError, scenario_from_dict
from tests.simulations.test_cnn_lstm_runs import sliced

EXAMPLE = Path(__file__).parents[2] / "simulations" / "examples" / "tiny_gpt_lora.toml"


def example(**federation) -> dict:
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["federation"].update(federation)
    return raw


def test_lora_on_a_512_mb_board_trains_adapters_only_within_budget() -> None:
    scenario = scenario_from_dict(example(clients_per_round=2, rounds=2))
    prepared = sliced(prepare_scenario(scenario), per_client=48, test=96)
    result = run_scenario(prepared)
    budget = get_profile("rpi-zero-2w").memory_budget_bytes
    assert get_profile("rpi-zero-2w").ram_gib == 0.5
    clients = [c for r in result.rounds for c in r.clients]
    assert clients and all(c.accepted for c in clients)
    assert all(c.device_class == "rpi-zero-2w" for c in clients)
    assert all(0 < c.metrics["peak_bytes"] <= budget for c in clients)
    base = build_model("tiny_gpt_shakespeare", vocab_size=2000)
    adapters = result.final.size
    assert all(c.bytes_up < 4 * adapters + 4096 for c in clients)  # the adapters, nothing else
    assert adapters < 0.1 * base.num_parameters()
    before, after = perplexity(result.initial_test_loss), perplexity(result.rounds[-1].test_loss)
    assert np.isfinite(before) and after < before
    # export: the adapters merge into a plain model of the base's shape
    model = build_model(prepared.spec.name, **prepared.spec.kwargs)
    model.set_flat(result.final)
    merged = merge_lora(model)
    assert merged.num_parameters() == base.num_parameters()


def test_recomputed_blocks_train_the_same_adapters_in_less_memory() -> None:
    """The example recomputes its blocks (checkpoint = "blocks"); keeping every activation
    instead gives the same adapters (the same arithmetic) at a higher engine peak."""
    runs = {}
    for mode in ("none", "blocks"):
        raw = example(clients_per_round=2, rounds=1)
        raw["model"]["checkpoint"] = mode
        prepared = sliced(prepare_scenario(scenario_from_dict(raw)), per_client=48, test=96)
        runs[mode] = run_scenario(prepared)
    peak = {m: max(c.metrics["peak_bytes"] for r in res.rounds for c in r.clients)
            for m, res in runs.items()}
    assert peak["blocks"] < 0.9 * peak["none"]
    final = runs["none"].final
    np.testing.assert_allclose(runs["blocks"].final, final, rtol=0,
                               atol=1e-5 * float(np.abs(final).max()))
    raw = example()
    raw["model"]["checkpoint"] = "layers"
    try:
        prepare_scenario(scenario_from_dict(raw, "s.toml"))
    except ScenarioError as exc:
        assert "checkpoint must be one of none, blocks" in str(exc)
    else:
        raise AssertionError("checkpoint = 'layers' was accepted")


def test_lora_settings_are_checked_with_the_scenario() -> None:  # one line, naming the key
    raw = example()
    raw["model"]["lora"] = {"rank": 0}
    try:
        scenario_from_dict(raw, "s.toml")
    except ScenarioError as exc:
        assert "model.lora.rank" in str(exc)
    else:
        raise AssertionError("rank 0 was accepted")
    raw["model"]["lora"] = {"targets": ["ffn"]}
    try:  # known once the model is built: when the scenario is prepared
        prepare_scenario(scenario_from_dict(raw, "s.toml"))
    except ScenarioError as exc:
        assert "model.lora.targets" in str(exc) and "ffn" in str(exc)
    else:
        raise AssertionError("a target naming no layer was accepted")
