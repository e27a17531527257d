"""``FlowerStrategy`` keeps the contract of Flower's own strategies.

Each test pins one way the adapter used to break the contract (the property-based parity
suite against Flower is ``test_flower_strategy_parity``), then Flower's defaults, the
README's table of the defaults that differ and the README's Flower app on Flower's simulation.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord

from aggregator.flower_strategy import ArrayLayout, FlowerStrategy
from aggregator.strategies import (
    build_strategy,
    flower_options,
    known_strategies,
    strategy_spec,
)
from tests.aggregator.flower_messages import FakeGrid, error_reply, record, reply

ALL_FLOWER = sorted(n for n in known_strategies() if strategy_spec(n).flower is not None)


@pytest.mark.parametrize("name", [n for n in ALL_FLOWER if not n.startswith("dp")])
def test_a_0d_array_keeps_its_shape(name):
    model = {"scalar": np.asarray(np.float32(1.0)), "w": np.ones((2, 3), np.float32)}
    ours = FlowerStrategy(name, {"num_malicious": 0} if "krum" in name else None)
    ours.remember(record(model))
    replies = [
        reply({k: v + 0.1 * (i + 1) for k, v in model.items()}, 10, 0.5, node=i + 1)
        for i in range(5)
    ]
    got, _ = ours.aggregate_train(1, replies)
    assert got["scalar"].numpy().shape == () and got["w"].numpy().shape == (2, 3)
    assert got["scalar"].numpy().dtype == np.float32


def test_fractional_weights_are_weights():
    model = {"w": np.zeros(2)}
    ours = FlowerStrategy("fedavg")
    ours.remember(record(model))
    got, _ = ours.aggregate_train(
        1,
        [
            reply({"w": np.array([1.0, 2.0])}, 2.5, 0.1, 1),
            reply({"w": np.array([2.0, 4.0])}, 2.5, 0.1, 2),
        ],
    )
    np.testing.assert_allclose(got["w"].numpy(), [1.5, 3.0])
    small = [
        reply({"w": np.full(2, float(i))}, w, 0.1, i + 1) for i, w in enumerate([0.25, 0.4, 0.123])
    ]
    got, metrics = ours.aggregate_train(1, small)
    expected = (0 * 0.25 + 1 * 0.4 + 2 * 0.123) / (0.25 + 0.4 + 0.123)
    np.testing.assert_allclose(got["w"].numpy(), [expected, expected], rtol=1e-12)
    assert metrics["train_loss"] == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["fedavg", "krum", "multikrum", "fedadam", "qfedavg"])
def test_a_float64_model_stays_float64(name):
    model = {"w": np.linspace(0, 1, 7)}
    ours = FlowerStrategy(name)
    ours.remember(record(model))
    replies = [reply({"w": model["w"] + 1e-9 * i}, 3, 0.5, i + 1) for i in range(4)]
    got, _ = ours.aggregate_train(1, replies)
    assert got["w"].numpy().dtype == np.float64
    if name in ("fedavg", "krum", "multikrum"):  # float64 precision, not float32's
        assert np.abs(got["w"].numpy() - model["w"]).max() < 1e-8


def test_trimmed_mean_is_a_function_of_the_values_not_their_order():
    ours = FlowerStrategy("fedtrimmedavg", {"beta": 0.25})
    ours.remember(record({"w": np.asarray(1.0)}))
    values = [0.5, 1.0, 2.0, 100.0]
    forward = [reply({"w": np.asarray(v)}, 1, 0.1, i + 1) for i, v in enumerate(values)]
    backward = [reply({"w": np.asarray(v)}, 1, 0.1, i + 1) for i, v in enumerate(values)][::-1]
    assert ours.aggregate_train(1, forward)[0]["w"].numpy() == pytest.approx(1.5)
    assert ours.aggregate_train(1, backward)[0]["w"].numpy() == pytest.approx(1.5)
    # The norm guard, asked for, judges the round's replies together: still order-free.
    guarded = FlowerStrategy("fedtrimmedavg", {"beta": 0.25, "max_norm_factor": 3.0})
    guarded.remember(record({"w": np.asarray(1.0)}))
    a = guarded.aggregate_train(1, forward)[0]["w"].numpy()
    guarded = FlowerStrategy("fedtrimmedavg", {"beta": 0.25, "max_norm_factor": 3.0})
    guarded.remember(record({"w": np.asarray(1.0)}))
    b = guarded.aggregate_train(1, backward)[0]["w"].numpy()
    assert a == b


def test_fedprox_sends_its_mu_and_every_client_option():
    grid = FakeGrid([1, 2])
    for options, mu in (({}, 0.0), ({"proximal_mu": 0.25}, 0.25)):
        config = ConfigRecord()
        messages = list(
            FlowerStrategy("fedprox", options).configure_train(
                1, record({"w": np.zeros(2)}), config, grid
            )
        )
        assert [m.content["config"]["proximal-mu"] for m in messages] == [mu, mu]
        assert config["server-round"] == 1


def test_too_few_replies_for_bulyan_is_flowers_none_none(caplog):
    ours = FlowerStrategy("bulyan", {"num_malicious": 1})
    ours.remember(record({"w": np.zeros(3)}))
    replies = [reply({"w": np.full(3, float(i))}, 1, 0.1, i + 1) for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        assert ours.aggregate_train(1, replies) == (None, None)
    assert "bulyan needs at least 4 * num_malicious + 3 = 7 updates, got 6" in caplog.text


def test_every_failure_is_a_warning_and_none_none(caplog):
    ours = FlowerStrategy("fedavg")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        assert ours.aggregate_train(1, []) == (None, None)  # before configure_train
        ours.remember(record({"w": np.zeros(3)}))
        assert ours.aggregate_train(1, []) == (None, None)
        assert ours.aggregate_train(1, [error_reply(1)]) == (None, None)
    assert caplog.text.count("not aggregated") == 3


def test_defaults_are_flowers():
    assert FlowerStrategy("fedavgm").strategy.server_opt.server_momentum == 0.0
    assert FlowerStrategy("fedprox").strategy.client_options == {"proximal_mu": 0.0}
    for name in known_strategies():
        assert FlowerStrategy(name).strategy.guard.factor == 0.0  # no norm guard
    assert (
        FlowerStrategy("fedavgm", {"server_momentum": 0.9}).strategy.server_opt.server_momentum
        == 0.9
    )
    assert build_strategy("fedavgm").server_opt.server_momentum == 0.9  # fedcore's own default


def test_readme_table_lists_every_default_that_differs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Using fedcore's strategies in a Flower app", 1)[1].split("\n## ", 1)[
        0
    ]
    for name in known_strategies():
        spec = strategy_spec(name)
        for option, value in flower_options(name).items():
            if name != "fedavg" and option in flower_options("fedavg"):
                continue  # the common options are listed once
            row = f"| `{option}` | {spec.defaults[option]:g} | {value:g} |"
            assert row in section, row


def test_a_bad_reply_is_rejected_alone(caplog):
    model = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    ours = FlowerStrategy("fedavg")
    ours.remember(record(model))
    good = [reply({k: v + 1 for k, v in model.items()}, 4, 0.1, node) for node in (1, 2)]
    bad = [
        reply({"w": np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}, 4, 0.1, 3),
        reply({"w": np.full((2, 2), np.nan, np.float32), "b": np.ones(2, np.float32)}, 4, 0.1, 4),
        reply({"w": np.ones((2, 2), bool), "b": np.ones(2, np.float32)}, 4, 0.1, 5),
        reply({k: v + 1 for k, v in model.items()}, -1, 0.1, 6),
        reply({k: v + 1 for k, v in model.items()}, float("inf"), 0.1, 7),
        reply({"w": np.ones((2, 2), np.float32)}, 4, 0.1, 8),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        got, metrics = ours.aggregate_train(1, good + bad)
    np.testing.assert_array_equal(got["w"].numpy(), np.ones((2, 2), np.float32))
    assert caplog.text.count("rejected") == len(bad)


def test_integer_arrays_come_back_as_integers():
    model = {"w": np.zeros(2, np.float32), "steps": np.asarray(10, np.int64)}
    ours = FlowerStrategy("fedavg")
    ours.remember(record(model))
    replies = [
        reply({"w": np.ones(2, np.float32), "steps": np.asarray(s, np.int64)}, 1, 0.1, i + 1)
        for i, s in enumerate((11, 14))
    ]
    got, _ = ours.aggregate_train(1, replies)
    assert got["steps"].numpy().dtype == np.int64 and int(got["steps"].numpy()) == 12  # 12.5 -> 12
    assert ArrayLayout.of(record(model)).dtype == np.float64


def _readme_example() -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Using fedcore's strategies in a Flower app", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_example_runs_on_flowers_simulation_and_fedprox_mu_reaches_the_clients(tmp_path):
    """The README's Flower app, run as a user would (``run_simulation``, Ray): the clients
    receive FedProx's mu, and the float64 model stays float64 and learns."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "flower_app.py").write_text(_readme_example())
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    done = subprocess.run(
        [sys.executable, "flower_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "train_metrics.json").read_text())
    assert sorted(history) == ["1", "2", "3"]
    assert all(m["mu"] == pytest.approx(0.1) for m in history.values())
    w = np.load(tmp_path / "w.npy")
    assert w.dtype == np.float64 and w.shape == (3,)
    np.testing.assert_allclose(w, [2.0, -1.0, 0.5], atol=0.1)
