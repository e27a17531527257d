"""Bring your own model, data, loss and strategy through a scenario; federated evaluation
equals a direct computation over the sampled clients' local test splits."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.evaluation import evaluation_sample
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from fedcore.objectives import objective
from fedcore.split import local_split
from simulations.lifecycle import run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import ScenarioError, scenario_from_dict

USER_PACKAGE = {
    "nets": """
        import numpy as np
        from fedcore.nn import Dense, ReLU, Sequential

        def build(input_dim, num_classes, width=16, depth=1, seed=0):
            rng = np.random.default_rng(seed)
            layers, w = [], input_dim
            for _ in range(depth):
                layers += [Dense(w, width, rng=rng), ReLU()]
                w = width
            return Sequential(*layers, Dense(w, num_classes, rng=rng))
    """,
    "data": """
        import numpy as np

        def load(partition_id, num_partitions, seed):
            rng = np.random.default_rng([seed, partition_id])
            n = 40 + 5 * partition_id
            y = rng.integers(0, 3, n)
            x = rng.normal(size=(n, 5)) + y[:, None]
            return x.astype(np.float32), y

        def regression(partition_id, num_partitions, seed):
            rng = np.random.default_rng([seed, partition_id])
            x = rng.normal(size=(30, 4)).astype(np.float32)
            return x, (x @ np.arange(1.0, 5.0)).astype(np.float32)
    """,
    "strategies": """
        from aggregator.strategies import PlainStep, Strategy, WeightedMean

        def make(uniform=False):
            return Strategy("mine", lambda n, b: WeightedMean(n, b, uniform=uniform), PlainStep())
    """,
}


def byo(**changes):
    raw = {
        "name": "byo",
        "seed": 5,
        "data": {"loader": "usr.data:load"},
        "model": {"factory": "usr.nets:build", "width": 12},
        "federation": {"num_clients": 6, "clients_per_round": 3, "rounds": 3,
                       "strategy": "usr.strategies:make",
                       "strategy_options": {"uniform": True}},
        "train": {"local_epochs": 1, "batch_size": 8, "learning_rate": 0.05,
                  "optimizer": "adam", "max_grad_norm": 5.0},
        "evaluation": {"every": 1, "fraction": 0.5, "local_test": 0.25},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section] = {**raw[section], name: value}
        else:
            raw[section] = value
    return scenario_from_dict(raw, source="byo.toml")


def check_federated_evaluation(result, prepared):
    """Every round's stored evaluation equals evaluating the round's model directly."""
    scenario = prepared.scenario
    loss = objective(scenario.train.loss, prepared.data.y_train)
    model = build_model(prepared.spec.name, **prepared.spec.kwargs)
    clients = list(range(scenario.federation.num_clients))
    for r in result.rounds:
        evaluation = r.evaluation
        assert evaluation is not None and not evaluation.rejected
        sampled = evaluation_sample(clients, scenario.evaluation.fraction, scenario.seed, r.number)
        assert [c.client_id for c in evaluation.clients] == sampled
        model.set_flat(r.params)
        for c in evaluation.clients:
            x, y = prepared.loader(c.client_id)
            _, test = local_split(y, scenario.evaluation.local_test, c.client_id)
            expected = evaluate(model, x[test], y[test], loss=loss)
            assert c.num_examples == len(test)
            assert (c.loss, c.metric) == pytest.approx(expected, rel=1e-6, abs=1e-9)
        summary = evaluation.summary
        n = np.array([c.num_examples for c in evaluation.clients], float)
        m = np.array([c.metric for c in evaluation.clients])
        assert summary["metric"] == pytest.approx(float(n @ m / n.sum()), rel=1e-12)


def test_user_model_loader_strategy_and_federated_evaluation(user_code, tmp_path):
    user_code("usr", USER_PACKAGE)
    scenario = byo()
    prepared = prepare_scenario(scenario)
    assert prepared.spec.name == "usr.nets:build" and prepared.spec.kwargs["width"] == 12
    result = run_scenario(prepared, "inprocess")
    assert len(result.rounds) == 3 and all(r.test_accuracy is not None for r in result.rounds)
    check_federated_evaluation(result, prepared)
    again = run_scenario(byo(), "inprocess")
    np.testing.assert_array_equal(again.final, result.final)


def test_training_never_sees_the_local_test_split(user_code):
    user_code("usr", USER_PACKAGE)
    prepared = prepare_scenario(byo())
    seen = []
    from client_runtime import device

    original = device.train_local

    def spy(model, x, y, settings, seed=0, step=None, loss_fn=None):
        seen.append((len(y), settings.local_test))
        return original(model, x, y, settings, seed, step, loss_fn)

    device.train_local = spy
    try:
        run_scenario(prepared, "inprocess")
    finally:
        device.train_local = original
    sizes = {len(prepared.loader(c)[1]) for c in range(6)}
    trained = {n for n, _ in seen}
    assert trained and not trained & sizes  # every client trained on less than all it has
    assert {share for _, share in seen} == {0.25}


def test_regression_with_mse_reports_mae_and_no_server_evaluation(user_code):
    user_code("usr", USER_PACKAGE)
    scenario = byo(data={"loader": "usr.data:regression"}, model={"factory": "usr.nets:build"},
                   train={"loss": "mse", "learning_rate": 0.01},
                   federation__strategy="fedavg", federation__strategy_options={},
                   evaluation={"fraction": 1.0, "local_test": 0.3, "server": False})
    prepared = prepare_scenario(scenario)
    assert prepared.spec.kwargs["num_classes"] == 1
    result = run_scenario(prepared, "inprocess")
    assert all(r.test_accuracy is None and r.test_loss is None for r in result.rounds)
    assert result.rounds[-1].evaluation.metric == "mae"
    check_federated_evaluation(result, prepared)


def test_entry_points_name_model_loader_strategy_and_loss(user_code):
    user_code("epusr", {**USER_PACKAGE, "losses": """
        from fedcore.engine import softmax_cross_entropy

        def smooth(output, target):
            return softmax_cross_entropy(output, target.reshape(-1))
        smooth.metric = "accuracy"
    """}, entry_points={
        "fedcore.models": {"tiny": "epusr.nets:build"},
        "fedcore.datasets": {"sites": "epusr.data:load"},
        "fedcore.strategies": {"mine": "epusr.strategies:make"},
        "fedcore.losses": {"smooth": "epusr.losses:smooth"},
    })
    scenario = byo(data={"loader": "sites"}, model={"name": "tiny", "depth": 2},
                   federation__strategy="mine", train__loss="smooth")
    result = run_scenario(scenario, "inprocess")
    assert len(result.rounds) == 3 and result.rounds[-1].evaluation.clients


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": {"factory": "usr.nets:nothing"}},
         "byo.toml: model.factory: model 'usr.nets:nothing': 'usr.nets' has no 'nothing'"),
        ({"model": {"factory": "usr.nets:build", "colour": "red"}},
         "byo.toml: model.colour: not used by model 'usr.nets:build' (its keys: width, depth)"),
        ({"model": {"factory": "usr.nets:build", "num_classes": 3}},
         "byo.toml: model.num_classes: set from the data and the run by model"),
        ({"model": {"name": "mlp", "factory": "usr.nets:build"}},
         "byo.toml: model.factory: give model.name or model.factory, not both"),
        ({"data": {"loader": "usr.data:missing"}},
         "byo.toml: data.loader: data loader 'usr.data:missing': 'usr.data' has no 'missing'"),
        ({"data": {"dataset": "files"}}, "byo.toml: data.path: missing required key"),
        ({"federation__strategy": "usr.strategies:gone"},
         "byo.toml: federation.strategy: strategy 'usr.strategies:gone'"),
        ({"federation__strategy_options": {"uniform": 1}},
         "byo.toml: federation.strategy_options: option 'uniform' must be true or false"),
        ({"train__loss": "hinge"}, "byo.toml: train.loss: unknown loss 'hinge'"),
        ({"train__momentum": 0.9}, "byo.toml: train.momentum: only used by optimizer 'sgd'"),
        ({"train__optimizer": "lbfgs"}, "byo.toml: train.optimizer:"),
        ({"train__local_test": 0.2}, "byo.toml: train.local_test: set by evaluation.local_test"),
        ({"evaluation__fraction": 0.0}, "byo.toml: evaluation.fraction: must be > 0"),
    ],
)
def test_bad_input_is_one_line_naming_the_key(user_code, changes, expected):
    user_code("usr", USER_PACKAGE)
    with pytest.raises(ScenarioError) as info:
        byo(**changes)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"data": {"loader": "usr.data:load"}, "model": {"factory": "usr.bad:not_module"}},
         "byo.toml: model.factory: model 'usr.bad:not_module' returned a list, not a "
         "fedcore.nn.Module"),
        ({"data": {"loader": "usr.bad:short"}},
         "byo.toml: data.loader: data loader 'usr.bad:short' (partition 0): x has 5 rows and y 4"),
        ({"data": {"loader": "usr.data:regression"}},
         "byo.toml: train.loss: 'cross_entropy' needs integer labels"),
        ({"model": {"factory": "usr.bad:raises"}},
         "byo.toml: model.factory: 'usr.bad:raises' raised RuntimeError: no GPU here"),
    ],
)
def test_bad_code_is_caught_when_preparing(user_code, changes, expected):
    user_code("usr", {**USER_PACKAGE, "bad": """
        import numpy as np

        def not_module(input_dim, num_classes):
            return [1]

        def raises(input_dim, num_classes):
            raise RuntimeError("no GPU here")

        def short(partition_id, num_partitions, seed):
            return np.ones((5, 3)), np.zeros(4, dtype=int)
    """})
    with pytest.raises(ScenarioError) as info:
        prepare_scenario(byo(**changes), source="byo.toml")
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_federated_evaluation_through_secagg_rounds():
    scenario = scenario_from_dict({
        "name": "secagg-eval", "seed": 3,
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"name": "logreg"},
        "federation": {"num_clients": 5, "clients_per_round": 5, "rounds": 2, "secagg": True},
        "train": {"local_epochs": 1, "learning_rate": 0.05},
        "evaluation": {"fraction": 0.6, "local_test": 0.2},
    })
    prepared = prepare_scenario(scenario)
    result = run_scenario(prepared, "inprocess")
    assert prepared.config.secagg is not None
    check_federated_evaluation(result, prepared)


def test_a_stored_run_writes_the_same_report(tmp_path, user_code):
    import json

    from aggregator.store import Store
    from simulations.reports import write_report, write_stored_report

    user_code("usr", USER_PACKAGE)
    store = Store(str(tmp_path / "runs.db"))
    result = run_scenario(byo(), "inprocess", store=store)
    live = json.loads(write_report(result, tmp_path / "live")[0].read_text())
    stored = json.loads(
        write_stored_report(store.get_run(result.run_id), tmp_path / "stored", 0.0)[0].read_text()
    )
    assert stored["evaluation"] == json.loads(json.dumps(live["evaluation"]))
    assert [r["fed_metric"] for r in stored["rounds"]] == [r["fed_metric"] for r in live["rounds"]]
