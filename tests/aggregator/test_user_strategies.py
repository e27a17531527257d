"""Bring your own strategy: register(), package.module:make, entry points, protocols."""

from __future__ import annotations

import numpy as np
import pytest

import aggregator.strategies as strategies
from aggregator.backend import select_backend
from aggregator.strategies import (
    STRATEGIES,
    AggregationRule,
    ServerOptimizer,
    Strategy,
    build_strategy,
    known_strategies,
    register,
    strategy_options,
)
from aggregator.updates import ClientUpdate

MAKERS = """
import numpy as np
from aggregator.strategies import PlainStep, Strategy, WeightedMean


class HalfStep:
    '''Server step: move half way (or `rate` of the way) to the aggregate.'''

    def __init__(self, rate):
        self.rate = rate

    def step(self, global_vector, aggregate, round_number):
        return global_vector + self.rate * (aggregate - global_vector)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def make(rate=0.5, mode="mean", uniform=False, context=None):
    '''Mean of the updates, then a damped server step.'''
    assert mode in ("mean",)
    return Strategy("mine", lambda n, b: WeightedMean(n, b, uniform=uniform), HalfStep(rate))


def no_default(rate):
    return None


def not_a_strategy(rate=1.0):
    return "fedavg"
"""


def _round(strategy: Strategy, vectors: list[np.ndarray], counts: list[int]) -> np.ndarray:
    agg = strategy.start_round(np.zeros(vectors[0].size, np.float32), 1)
    for v, n in zip(vectors, counts, strict=True):
        agg.offer(ClientUpdate(n, 1.0, 0.0, v.nbytes, values=v))
    return agg.finish()


def test_reference_to_a_maker_on_sys_path(user_code):
    user_code("userstrat", {"make": MAKERS})
    name = "userstrat.make:make"
    assert strategy_options(name) == {"max_norm_factor": 30.0, "rate": 0.5, "mode": "mean",
                                      "uniform": False}
    assert strategy_options(name, {"rate": 1, "uniform": True})["rate"] == 1.0
    strategy = build_strategy(name, {"rate": 0.25})
    v = [np.full(4, 2.0, np.float32), np.full(4, 6.0, np.float32)]
    np.testing.assert_allclose(_round(strategy, v, [1, 3]), 0.25 * 5.0, rtol=1e-6)
    uniform = build_strategy(name, {"uniform": True})
    np.testing.assert_allclose(_round(uniform, v, [1, 3]), 0.5 * 4.0, rtol=1e-6)


def test_entry_point_strategy(user_code):
    user_code("epstrat", {"make": MAKERS},
              entry_points={"fedcore.strategies": {"halfway": "epstrat.make:make"}})
    assert "halfway" in known_strategies()
    strategy = build_strategy("halfway")
    assert strategy.name == "halfway"
    assert isinstance(strategy.server_opt, ServerOptimizer)


def test_names_registered_after_import_are_seen_by_scenarios_too():
    assert "register" in strategies.__all__

    @register("late-strategy", {"weight": 1, "label": "x", "on": True}, "registered late")
    def build(options, context):
        return Strategy("late-strategy", lambda n, b: strategies.WeightedMean(n, b))

    try:
        assert "late-strategy" in known_strategies()
        assert build_strategy("late-strategy", {"label": "y", "on": False}).name == "late-strategy"
        for bad, needle in [({"label": 3}, "must be a string"), ({"on": 1}, "true or false"),
                            ({"weight": "1"}, "must be a number")]:
            with pytest.raises(ValueError, match=needle):
                strategy_options("late-strategy", bad)
    finally:
        STRATEGIES._names.pop("late-strategy")


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("userstrat2.make:no_default", "parameter 'rate' needs a default"),
        ("userstrat2.make:not_a_strategy", "returned a str, not an aggregator.strategies.Strategy"),
        ("userstrat2.make:missing", "'userstrat2.make' has no 'missing'"),
        ("nosuch", "unknown strategy 'nosuch'"),
    ],
)
def test_bad_strategies_are_one_line_errors(user_code, name, needle):
    user_code("userstrat2", {"make": MAKERS})
    with pytest.raises(ValueError) as info:
        build_strategy(name)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_built_in_pieces_satisfy_the_protocols():
    strategy = build_strategy("fedadam")
    assert isinstance(strategy.server_opt, ServerOptimizer)
    assert isinstance(strategy.make_rule(4, select_backend("cpu")), AggregationRule)
