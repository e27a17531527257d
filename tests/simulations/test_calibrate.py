"""Calibrating the virtual clock against the engine's measured training speed."""

from __future__ import annotations

import pytest

from client_runtime.cost import model_family
from device_profiles.efficiency import efficiencies
from fedcore.models import build_model
from simulations.calibrate import REFERENCES, Measurement, measure_family, render_toml
from simulations.harness import simulate
from simulations.prepare import prepare_scenario
from simulations.scenario import load_scenario


@pytest.mark.parametrize(
    ("name", "kwargs", "family"),
    [
        ("mlp", {"input_dim": 8, "num_classes": 3}, "mlp"),
        ("logreg", {"input_dim": 8, "num_classes": 3}, "mlp"),
        ("cnn", {"num_classes": 3, "input_shape": (8, 8, 1), "channels": (2, 2), "hidden": 4},
         "cnn"),
        ("lstm", {"num_classes": 5, "embed_dim": 4, "hidden": 4}, "rnn"),
        ("tiny_gpt", {"vocab_size": 5, "embed_dim": 8, "hidden": 8, "n_layers": 1}, "transformer"),
    ],
)
def test_model_family_follows_the_layers(name, kwargs, family):
    assert model_family(build_model(name, **kwargs)) == family
    assert family in REFERENCES


def test_attention_scores_are_counted_beside_the_projections():
    from client_runtime.cost import forward_flops

    model = build_model("tiny_gpt", vocab_size=5, embed_dim=8, hidden=8, n_layers=1)
    short, long = forward_flops(model, (4,)), forward_flops(model, (8,))
    assert long > 2 * short  # the T x T products grow faster than the projections


def test_a_measurement_is_real_and_its_file_reads_back(tmp_path):
    measured = measure_family("mlp", examples=64, batch_size=16, repeats=1)
    assert measured.train_gflops > 0 and measured.matmul_gflops > 0
    assert 0 < measured.efficiency
    fake = [Measurement("mlp", "m", 1.0, 4.0), Measurement("cnn", "c", 2.0, 4.0)]
    path = tmp_path / "efficiency.toml"
    path.write_text(render_toml(fake, threads=2))
    assert efficiencies(path) == {"mlp": 0.25, "cnn": 0.5}


@pytest.mark.slow  # one of the suite's longest runs
def test_iot_boards_cnn_shows_what_it_claims():
    """Its comment says the slowest boards miss the deadline and the rest make it."""
    scenario = load_scenario("simulations/iot_boards_cnn.toml")
    result = simulate(prepare_scenario(scenario.model_copy(
        update={"federation": scenario.federation.model_copy(update={"rounds": 2})})))
    clients = [c for r in result.rounds for c in r.clients]
    late = [c for c in clients if "missed the deadline" in (c.reason or "")]
    accepted = [c for c in clients if c.accepted]
    assert late and {c.device_class for c in late} <= {"rpi-zero-2w", "rpi-3b-plus"}
    assert len(accepted) > len(late)
