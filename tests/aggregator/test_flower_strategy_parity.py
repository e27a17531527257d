"""``FlowerStrategy`` against Flower's own strategies, property-based.

The suite feeds Flower's strategy (``flwr.serverapp.strategy``) and ``FlowerStrategy`` with
the same name the same random rounds - any number of replies, client errors among them,
several arrays of random shapes (0-d included), float32 or float64, integer or fractional
weights - Flower's in arrival order, ours permuted, and compares the next model (shapes,
dtypes, values to 1e-6 relative to the operands), the metrics and the ``(None, None)`` cases,
over two rounds so server-optimizer state is compared too. ``test_flower_strategy`` pins each
way the adapter used to break the contract.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aggregator.flower_strategy import FlowerStrategy
from tests.aggregator.flower_cases import OPTIONS, case_names, flower_strategy
from tests.aggregator.flower_messages import FakeGrid, error_reply, numpy, record, reply

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


@pytest.mark.parametrize("name", case_names())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_parity_with_flower(name, data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), "dtype")
    layout = data.draw(shapes, "shapes")
    seed = data.draw(st.integers(0, 2**32 - 1), "seed")
    rng = np.random.default_rng(seed)
    model = {f"layer{i}": np.asarray(rng.standard_normal(s), dtype) for i, s in enumerate(layout)}
    flower, ours = flower_strategy(name), FlowerStrategy(name, OPTIONS[name])
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
