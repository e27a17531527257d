"""Federated evaluation in asynchronous runs: every ``every`` server steps, on clients idle then."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.asynchronous import idle_cohort
from aggregator.evaluation import evaluation_sample
from aggregator.store import Store
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from fedcore.objectives import objective
from fedcore.split import local_split
from simulations.prepare import prepare_scenario
from simulations.scenario import scenario_from_dict
from tests.aggregator.test_asynchronous import paused_and_resumed, run, scenario

EVALUATION = {"every": 2, "fraction": 0.5, "local_test": 0.25}


def with_evaluation(data: dict) -> dict:
    return {**data, "evaluation": dict(EVALUATION)}


def test_the_idle_cohort_leaves_out_training_and_buffered_clients():
    available = {3: 103, 1: 101, 7: 107, 5: 105}
    assert idle_cohort(available, sorted(available), {1, 7}) == {3: 103, 5: 105}
    assert evaluation_sample([3, 5], 0.5, 1, 2, of=4) == evaluation_sample([3, 5], 1.0, 1, 2)
    assert len(evaluation_sample(list(range(10)), 0.5, 1, 2, of=100)) == 10  # at most all


def test_with_everyone_at_once_async_evaluates_exactly_like_sync():
    sync = run(with_evaluation(scenario(rounds=3)))
    asynchronous = run(with_evaluation(scenario(rounds=3, mode="async", concurrency=12,
                                                buffer=12)))
    assert [r.number for r in asynchronous.rounds if r.evaluation] == [2, 3]
    for a, b in zip(sync.rounds, asynchronous.rounds, strict=True):
        assert (a.evaluation is None) == (b.evaluation is None)
        if a.evaluation is not None:
            assert a.evaluation.to_json() == b.evaluation.to_json()


def test_a_step_is_evaluated_by_idle_clients_on_their_local_test_split():
    data = with_evaluation(scenario(rounds=5, population=True, mode="async", concurrency=6,
                                    buffer=3))
    prepared = prepare_scenario(scenario_from_dict(data))
    result = run(data)
    assert [r.number for r in result.rounds if r.evaluation] == [2, 4, 5]
    model = build_model(prepared.spec.name, **prepared.spec.kwargs)
    loss = objective(prepared.scenario.train.loss, prepared.data.y_train)
    for r in result.rounds:
        if r.evaluation is None:
            continue
        assert r.evaluation.clients and not r.evaluation.rejected
        evaluated = {c.client_id for c in r.evaluation.clients}
        # a client that trained from an earlier model and answered after this step was
        # training while the step was evaluated: it must not be in the cohort
        for later in result.rounds[r.number:]:
            for c in later.clients:
                if "staleness" in c.metrics:
                    base = later.number - 1 - int(c.metrics["staleness"])
                    assert not (base < r.number and c.client_id in evaluated), (r.number, c)
        model.set_flat(r.params)
        for c in r.evaluation.clients:
            x, y = prepared.loader(c.client_id)
            _, test = local_split(y, EVALUATION["local_test"], c.client_id)
            assert c.num_examples == len(test)
            expected = evaluate(model, x[test], y[test], loss=loss)
            assert (c.loss, c.metric) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    again = run(data)
    assert [r.evaluation.to_json() for r in again.rounds if r.evaluation] == [
        r.evaluation.to_json() for r in result.rounds if r.evaluation]


def test_evaluations_are_stored_and_a_resumed_run_evaluates_the_same(tmp_path):
    data = with_evaluation(scenario(rounds=6, population=True, mode="async", concurrency=6,
                                    buffer=3))
    reference, resumed, store = paused_and_resumed(data, tmp_path)
    np.testing.assert_array_equal(resumed.final, reference.final)
    stored = {r.number: r.evaluation for r in store.get_run(1).rounds}
    expected = {r.number: r.evaluation for r in Store(str(tmp_path / "a.db")).get_run(1).rounds}
    assert [n for n, e in stored.items() if e] == [2, 4, 6]
    assert stored == expected
