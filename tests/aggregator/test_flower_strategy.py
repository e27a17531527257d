"""``FlowerStrategy`` keeps the contract of Flower's own strategies.

A property-based parity suite feeds Flower's strategy (``flwr.serverapp.strategy``) and
``FlowerStrategy`` with the same name the same random rounds - any number of replies, client
errors among them, several arrays of random shapes (0-d included), float32 or float64,
integer or fractional weights - Flower's in arrival order, ours permuted, and compares the
next model (shapes, dtypes, values to 1e-6 relative to the operands), the metrics and the
``(None, None)`` cases, over two rounds so server-optimizer state is compared too. The
focused tests below pin each way the adapter used to break the contract.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aggregator.flower_strategy import ArrayLayout, FlowerStrategy
from aggregator.strategies import (
    build_strategy,
    flower_options,
    known_strategies,
    strategy_spec,
)

KEY = "num-examples"


class FakeGrid:
    """What Flower's ``configure_train`` asks of a grid: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def reply(arrays: dict[str, np.ndarray], weight, loss: float, node: int, extra=None) -> Message:
    """A train reply from ``node`` as a Flower ClientApp sends it."""
    ins = Message(RecordDict(), node, "train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({KEY: weight, "train_loss": loss, **(extra or {})}),
        }
    )
    return Message(content, reply_to=ins)


def error_reply(node: int) -> Message:
    return Message(
        Error(code=1, reason="out of memory"), reply_to=Message(RecordDict(), node, "train")
    )


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


# name -> (Flower's strategy, our options), both with the same hyperparameters
PARITY = {
    "fedavg": (lambda: fl.FedAvg(), {}),
    "fedprox": (lambda: fl.FedProx(proximal_mu=0.3), {"proximal_mu": 0.3}),
    "fedavgm": (
        lambda: fl.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
        {"server_learning_rate": 0.7, "server_momentum": 0.9},
    ),
    "fedadam": (
        lambda: fl.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=1e-2),
        {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
    ),
    "fedyogi": (lambda: fl.FedYogi(eta=0.05, tau=1e-2), {"eta": 0.05, "tau": 1e-2}),
    "fedadagrad": (lambda: fl.FedAdagrad(eta=0.05, tau=1e-2), {"eta": 0.05, "tau": 1e-2}),
    "fedmedian": (lambda: fl.FedMedian(), {}),
    "fedtrimmedavg": (lambda: fl.FedTrimmedAvg(beta=0.2), {"beta": 0.2}),
    "krum": (lambda: fl.Krum(num_malicious_nodes=1), {"num_malicious": 1}),
    "multikrum": (
        lambda: fl.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3),
        {"num_malicious": 1, "select": 3},
    ),
    "bulyan": (lambda: fl.Bulyan(num_malicious_nodes=1), {"num_malicious": 1}),
    "qfedavg": (
        lambda: fl.QFedAvg(client_learning_rate=0.1, q=0.2),
        {"q": 0.2, "client_learning_rate": 0.1},
    ),
}
# Flower's FedAdam and QFedAvg answer a float32 model in float64 (numpy promotes their
# float64 scalars); fedcore keeps the model's dtype (README: differences from Flower).
PROMOTES_FLOAT32 = {"fedadam", "qfedavg"}

shapes = st.lists(st.lists(st.integers(1, 4), max_size=2).map(tuple), min_size=1, max_size=3)
weights = st.one_of(st.integers(1, 100), st.floats(0.05, 100.0))


def _krum_selection_is_clear(name: str, rounds: list) -> bool:
    """Krum picks by score: skip the (measure-zero) cases where two scores tie to float32
    rounding, in which Flower's and our distance arithmetic may pick differently."""
    if name not in ("krum", "multikrum", "bulyan"):
        return True
    for values in rounds:
        if len(values) < 2:
            continue
        flat = np.stack([np.concatenate([v.ravel() for v in r.values()]) for r in values])
        flat = flat.astype(np.float64)
        d = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
        closest = max(1, len(values) - 1 - 2)
        scores = np.sort([np.sort(row)[1 : closest + 1].sum() for row in d])
        gaps = np.diff(scores) / max(scores.max(), 1e-30)
        if gaps.size and gaps.min() < 1e-4:
            return False
    return True


def _replies(values, wts, losses, errors: int) -> list[Message]:
    """Fresh replies (Flower's strategies consume theirs), client errors last."""
    made = [
        reply(v, w, loss, node=i + 1)
        for i, (v, w, loss) in enumerate(zip(values, wts, losses, strict=True))
    ]
    return made + [error_reply(len(values) + 1 + i) for i in range(errors)]


LONG = ("qfedavg", "bulyan")  # minutes of Flower's own arithmetic: the slow subset


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in LONG else n for n in sorted(PARITY)],
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_parity_with_flower(name, data):
    make_flower, options = PARITY[name]
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), "dtype")
    layout = data.draw(shapes, "shapes")
    seed = data.draw(st.integers(0, 2**32 - 1), "seed")
    rng = np.random.default_rng(seed)
    model = {f"layer{i}": np.asarray(rng.standard_normal(s), dtype) for i, s in enumerate(layout)}
    flower, ours = make_flower(), FlowerStrategy(name, options)
    flower_model = ours_model = model
    plan = []
    for rnd in (1, 2):
        n = data.draw(st.integers(0, 8), f"replies in round {rnd}")
        errors = data.draw(st.integers(0, 2), f"errors in round {rnd}")
        plan.append(
            (
                [
                    {
                        k: np.asarray(
                            v + rng.uniform(0.05, 1.0) * rng.standard_normal(v.shape), dtype
                        )
                        for k, v in model.items()
                    }
                    for _ in range(n)
                ],
                [data.draw(weights, "weight") for _ in range(n)],
                rng.uniform(0.1, 2.0, n).tolist(),
                errors,
                data.draw(st.permutations(range(n + errors)), "arrival order"),
            )
        )
    assume(_krum_selection_is_clear(name, [p[0] for p in plan]))
    for rnd, (values, wts, losses, errors, order) in enumerate(plan, start=1):
        grid = FakeGrid(list(range(1, len(values) + errors + 3)))
        config_f, config_o = ConfigRecord(), ConfigRecord()
        flower.configure_train(rnd, record(flower_model), config_f, grid)
        ours.configure_train(rnd, record(ours_model), config_o, grid)
        assert dict(config_o) == dict(config_f)  # the client settings reach the clients

        want, want_metrics = flower.aggregate_train(rnd, _replies(values, wts, losses, errors))
        permuted = _replies(values, wts, losses, errors)
        got, got_metrics = ours.aggregate_train(rnd, [permuted[i] for i in order])
        assert (got is None) == (want is None), f"round {rnd}"
        assert (got_metrics is None) == (want_metrics is None)
        if want is None:
            continue
        assert list(got) == list(want)
        scale = max(
            1.0,
            *(float(np.abs(v).max(initial=0)) for v in model.values()),
            *(float(np.abs(a).max(initial=0)) for v in values for a in v.values()),
        )
        for key in want:
            g, w = got[key].numpy(), want[key].numpy()
            assert g.shape == w.shape == model[key].shape
            assert g.dtype == model[key].dtype
            if not (name in PROMOTES_FLOAT32 and dtype == np.float32):
                assert w.dtype == g.dtype
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * scale, err_msg=f"{key} {rnd}")
        assert set(got_metrics) == set(want_metrics)
        for key in want_metrics:
            assert got_metrics[key] == pytest.approx(want_metrics[key], rel=1e-6)
        flower_model, ours_model = numpy(want), numpy(got)


# --- each break of the contract that the parity suite would have caught --------------------

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
