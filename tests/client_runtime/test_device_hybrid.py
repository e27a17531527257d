"""A device whose eager step exceeds its budget keeps the same step another way: blocks
recomputed, the planned (hybridized) step, micro-batches; only then a smaller batch."""

import numpy as np
import pytest

from client_runtime import compiled
from client_runtime.device import DoesNotFit, train_on_device
from client_runtime.trainer import train_local
from fedcore import protocol
from fedcore.engine import NaiveEngine, softmax_cross_entropy, use_engine
from fedcore.engine.parallel import get_num_threads, set_num_threads
from fedcore.models import build_model
from fedcore.objectives import Objective
from fedcore.settings import TrainSettings

rng = np.random.default_rng(0)
X = rng.standard_normal((512, 64)).astype(np.float32)
Y = rng.integers(0, 10, 512)
CONFIG = TrainSettings(local_epochs=1, batch_size=256, learning_rate=0.1, momentum=0.9)


def make():
    return build_model("mlp", num_classes=10, input_dim=64, hidden=[512, 512, 512])


@pytest.fixture()
def engine():
    compiled.clear_compiled_steps()
    with use_engine(NaiveEngine()) as eng:
        yield eng
    compiled.clear_compiled_steps()


def eager_peak(engine, settings: TrainSettings = CONFIG) -> tuple:
    """(live bytes before, peak bytes of an eager round, its result, a fresh model). The
    round runs on one thread: the whole-batch step, which is what a device under a budget
    runs (it never cuts a batch into shards, see `fedcore.nn.shards`)."""
    model = make()
    start = model.get_flat()
    pool = engine.pool
    live = pool.live_bytes
    pool.reset_peak()
    threads = get_num_threads()
    set_num_threads(1)
    try:
        train_local(model, X, Y, settings)
    finally:
        set_num_threads(threads)
    peak = pool.peak_bytes
    trained = model.get_flat()
    model.set_flat(start)
    return live, peak, trained, model


def test_over_budget_eager_step_runs_planned_and_is_cached(engine):
    live, peak, trained, model = eager_peak(engine)
    budget = int(live + 0.9 * (peak - live))  # eager does not fit; recomputation does
    start = model.get_flat()
    result = train_on_device(model, X, Y, CONFIG, 0, {protocol.MEMORY_BUDGET: budget})
    assert result.costs["hybrid"] == 1.0
    assert result.costs["batch_size"] == CONFIG.batch_size  # not halved
    assert result.costs["peak_bytes"] <= budget
    np.testing.assert_allclose(model.get_flat(), trained, rtol=1e-5, atol=1e-6)
    (_, _, step, _), = compiled._steps.values()
    model.set_flat(start)
    again = train_on_device(model, X, Y, CONFIG, 0, {protocol.MEMORY_BUDGET: budget})
    assert again.costs["hybrid"] == 1.0 and step.traces == 1  # compiled once per process
    np.testing.assert_allclose(model.get_flat(), trained, rtol=1e-5, atol=1e-6)


def test_a_step_that_fits_stays_eager(engine):
    model = make()
    result = train_on_device(model, X, Y, CONFIG, 0, {protocol.MEMORY_BUDGET: 1 << 30})
    assert result.costs["hybrid"] == 0.0
    assert not compiled._steps


def step_bytes(engine, settings: TrainSettings) -> tuple:
    """(bytes a round's step adds to what is live, its result, a fresh model)."""
    live, peak, trained, model = eager_peak(engine, settings)
    return peak - live, trained, model


#: clipping, which a compiled step does not do: past eager, only micro-batches keep the step
CLIPPED = CONFIG.with_values({"max_grad_norm": 5.0})


def test_over_budget_without_a_plan_trains_in_micro_batches_of_the_same_batch(engine):
    whole, trained, model = step_bytes(engine, CLIPPED)
    halves = step_bytes(engine, CLIPPED.with_values({"micro_batch": 128}))[0]
    assert halves < whole
    # micro-batches of half the batch fit, the whole batch does not
    budget = engine.pool.live_bytes + (halves + whole) // 2
    start = model.get_flat()
    for _ in range(2):  # the second round starts on the path the first found
        model.set_flat(start)
        result = train_on_device(model, X, Y, CLIPPED, 0, {protocol.MEMORY_BUDGET: budget})
        assert result.costs["micro_batch"] == CONFIG.batch_size // 2
        assert result.costs["hybrid"] == 0.0 and not compiled._steps
        assert result.costs["batch_size"] == CONFIG.batch_size  # not halved
        assert result.costs["peak_bytes"] <= budget
        np.testing.assert_allclose(model.get_flat(), trained, rtol=0,
                                   atol=1e-5 * float(np.abs(trained).max()))
    roomy = train_on_device(model, X, Y, CLIPPED, 0, {protocol.MEMORY_BUDGET: 1 << 30})
    assert roomy.costs["micro_batch"] == 0.0


def test_micro_batches_shrink_until_one_fits(engine):
    model = make()
    steps = [step_bytes(engine, CLIPPED.with_values({"micro_batch": rows}))[0] for rows in (32, 64)]
    assert steps[0] < steps[1]
    budget = engine.pool.live_bytes + sum(steps) // 2  # micro-batches of 32 rows fit, 64 not
    result = train_on_device(model, X, Y, CLIPPED, 0, {protocol.MEMORY_BUDGET: budget})
    assert result.costs["micro_batch"] == 32
    assert result.costs["batch_size"] == CONFIG.batch_size
    assert result.costs["peak_bytes"] <= budget


#: a user's loss that does not say it is a mean over rows: its steps cannot be cut
UNCUT = Objective("per_batch", lambda out, t: softmax_cross_entropy(out, t.reshape(-1)),
                  "accuracy")


@pytest.mark.slow  # one of the suite's longest runs
def test_when_no_plan_fits_the_batch_halves_or_the_client_refuses(engine):
    live, peak, _, model = eager_peak(engine)
    budget = int(live + 0.72 * (peak - live))  # batch 256 fits no plan; 128 does
    with pytest.raises(DoesNotFit, match="memory"):
        train_on_device(model, X, Y, CONFIG, 0, {protocol.MEMORY_BUDGET: budget}, UNCUT)
    result = train_on_device(model, X, Y, CONFIG, 0,
                             {protocol.MEMORY_BUDGET: budget, protocol.ADAPT_BATCH: True},
                             UNCUT)
    assert result.costs["batch_size"] < CONFIG.batch_size
    assert result.costs["peak_bytes"] <= budget


GPT = dict(vocab_size=50, embed_dim=32, hidden=96, n_layers=4, n_heads=4, n_kv_heads=2)
TOKENS = rng.integers(0, 50, (32, 24))
NEXT = rng.integers(0, 50, (32, 24))


def test_a_gpt_over_budget_recomputes_its_blocks_eagerly_first(engine):
    settings = CONFIG.with_values({"batch_size": 16})
    model = build_model("tiny_gpt", seed=0, **GPT)
    start = model.get_flat()
    pool = engine.pool
    live = pool.live_bytes
    peaks = {}
    for mode in ("none", "blocks"):
        model.set_checkpoint(mode)
        model.set_flat(start)
        pool.reset_peak()
        train_local(model, TOKENS, NEXT, settings)
        peaks[mode] = pool.peak_bytes
    trained = model.get_flat()
    model.set_checkpoint("none")
    budget = int((peaks["none"] + peaks["blocks"]) / 2)
    assert peaks["blocks"] < budget < peaks["none"] and live < budget
    for _ in range(2):  # the second round starts on the path the first found
        model.set_flat(start)
        result = train_on_device(model, TOKENS, NEXT, settings, 0,
                                 {protocol.MEMORY_BUDGET: budget})
        assert result.costs["recompute"] == 1.0 and result.costs["hybrid"] == 0.0
        assert result.costs["peak_bytes"] <= budget
        assert not compiled._steps
        np.testing.assert_allclose(model.get_flat(), trained, rtol=0,
                                   atol=1e-5 * float(np.abs(trained).max()))
    roomy = train_on_device(model, TOKENS, NEXT, settings, 0, {protocol.MEMORY_BUDGET: 1 << 30})
    assert roomy.costs["recompute"] == 0.0 and model.checkpoint == "none"
