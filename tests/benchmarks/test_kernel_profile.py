"""``benchmarks.kernel_profile``: per-op CPU time, the critical path and the hand-off counts."""

import numpy as np

from benchmarks.engine import fed_eager_step
from benchmarks.kernel_profile import fedcore_profile
from fedcore.engine import parallel
from fedcore.models import build_model
from fedcore.optim import SGD
from tests.fedcore.engine.test_parallel import two_threads


def _step():
    model = build_model("cnn", input_dim=64, channels=(4, 8), hidden=16, seed=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y = rng.integers(0, 10, 8)

    step = fed_eager_step(model, opt)  # the benchmark's own training step
    return lambda: step(x, y)


def test_split_regions_are_counted_and_timed_on_two_threads():
    with two_threads():  # tiny grains: every kernel that can split does
        per, total, split, critical, handoffs = fedcore_profile(_step(), steps=2)
        assert parallel._split.__name__ == "_split"  # the timing wrapper is taken off again
    assert "between ops" in per and abs(sum(per.values()) - total) < 1e-6
    assert split and all(split[k] <= per[k] + 1e-6 for k in split)
    # conv forward, pooling, products, conv backward...: several regions a step
    assert handoffs["regions"] >= 5
    assert handoffs["start_delay_us"] > 0 and handoffs["caller_wait_ms"] >= 0
    assert sum(critical.values()) <= total + 1e-6


def test_one_thread_has_no_regions():
    saved = parallel.get_num_threads()
    parallel.set_num_threads(1)
    try:
        *_, handoffs = fedcore_profile(_step(), steps=1)
    finally:
        parallel.set_num_threads(saved)
    assert handoffs == {"regions": 0, "start_delay_us": 0.0, "caller_wait_ms": 0.0}
