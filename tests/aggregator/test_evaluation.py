"""Federated evaluation on the server side: sampling, reply validation and the summary."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.evaluation import (
    ClientEvaluation,
    FederatedEvaluation,
    _parse_reply,
    evaluation_sample,
)


def test_sample_is_seeded_distinct_and_at_least_one():
    ids = list(range(20))
    a = evaluation_sample(ids, 0.25, 7, 3)
    assert a == evaluation_sample(ids, 0.25, 7, 3) and len(a) == 5 == len(set(a))
    assert a != evaluation_sample(ids, 0.25, 7, 4)
    assert len(evaluation_sample(ids, 0.01, 7, 3)) == 1
    assert evaluation_sample(ids, 1.0, 7, 3) == ids and evaluation_sample([], 0.5, 1, 1) == []


def test_summary_weighted_mean_percentiles_and_worst_decile():
    rng = np.random.default_rng(0)
    n = rng.integers(5, 50, 23)
    acc = rng.random(23)
    loss = rng.random(23) * 3
    result = FederatedEvaluation("accuracy", [
        ClientEvaluation(i, int(n[i]), float(loss[i]), float(acc[i])) for i in range(23)])
    s = result.summary
    assert s["metric"] == pytest.approx(np.average(acc, weights=n), rel=1e-12)
    assert s["loss"] == pytest.approx(np.average(loss, weights=n), rel=1e-12)
    assert [s["p10"], s["median"], s["p90"]] == pytest.approx(np.percentile(acc, [10, 50, 90]))
    assert s["worst_decile"] == pytest.approx(np.sort(acc)[:3].mean())  # ceil(23 / 10) = 3
    mae = FederatedEvaluation("mae", result.clients)
    assert mae.summary["worst_decile"] == pytest.approx(np.sort(acc)[-3:].mean())
    again = FederatedEvaluation.from_json(result.to_json())
    assert again.clients == result.clients and again.summary == s


class _Reply:
    def __init__(self, content=None, error=None):
        self.content, self.error = content or {}, error

    def has_error(self):
        return self.error is not None


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        (None, "without a 'metrics'"),
        ({"num_examples": 3, "loss": 1.0}, "metric missing"),
        ({"num_examples": 3, "loss": float("nan"), "metric": 0.5}, "loss is not finite"),
        ({"num_examples": 0, "loss": 1.0, "metric": 0.5}, "positive integer"),
        ({"num_examples": 2.5, "loss": 1.0, "metric": 0.5}, "positive integer"),
        ({"num_examples": [3], "loss": 1.0, "metric": 0.5}, "num_examples missing or not"),
        ({"num_examples": 10**400, "loss": 1.0, "metric": 0.5}, "not finite"),  # no Overflow
    ],
)
def test_bad_replies_are_rejected_with_a_reason(metrics, needle):
    from flwr.app import MetricRecord

    content = {} if metrics is None else {"metrics": MetricRecord(metrics)}
    with pytest.raises(ValueError, match=needle):
        _parse_reply(_Reply(content))
    with pytest.raises(ValueError, match="more than the 3 the client declared"):
        _parse_reply(_Reply({"metrics": MetricRecord(
            {"num_examples": 4, "loss": 0.5, "metric": 0.75})}), declared=3)
    assert _parse_reply(_Reply({"metrics": MetricRecord(
        {"num_examples": 4, "loss": 0.5, "metric": 0.75})})) == (4, 0.5, 0.75)
