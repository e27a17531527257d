"""Hybridize: a traced, planned, replayed step equals the eager step; budgets; no allocation."""

import numpy as np
import pytest

from fedcore.engine import (
    MemoryBudgetError,
    MutationError,
    NaiveEngine,
    Primitive,
    Tensor,
    apply,
    defvjp,
    mean,
    mse,
    relu,
    relu_,
    reshape,
    softmax_cross_entropy,
    use_engine,
)
from fedcore.engine.hybrid import PlanBudgetError, compile_step
from fedcore.engine.threaded import ThreadedEngine
from fedcore.models import build_model, mlp
from fedcore.nn import Dense, Module
from fedcore.optim import SGD

OPTS = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.8, nesterov=True,
                                                        weight_decay=0.01)]


def batches(n, batch=16, dim=20, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, dim)).astype(np.float32),
             rng.integers(0, classes, batch)) for _ in range(n)]


def eager(make, data, loss_fn=softmax_cross_entropy, **opt_kw):
    model = make()
    opt = SGD(model.parameters(), **opt_kw)
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.get_flat()


def hybrid(make, data, loss_fn=softmax_cross_entropy, budget=None, **opt_kw):
    model = make()
    step = compile_step(model, loss_fn, SGD(model.parameters(), **opt_kw), budget)
    return [step(x, y) for x, y in data], model.get_flat(), step


def small():
    return mlp(20, 5, hidden=(32, 16), seed=0)


def deep():
    return mlp(16, 4, hidden=(32,) * 10, seed=1)


@pytest.mark.parametrize("opt_kw", OPTS)
def test_hybridized_step_equals_eager(opt_kw):
    data = batches(4)
    ref_losses, ref_flat = eager(small, data, **opt_kw)
    losses, flat, step = hybrid(small, data, **opt_kw)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    np.testing.assert_allclose(flat, ref_flat, rtol=1e-6, atol=1e-7)
    assert np.array_equal(flat, ref_flat)  # same kernels, same order: bitwise here
    assert step.traces == 1 and step.optimizer.step_count == 4


def test_replay_allocates_nothing_and_stays_at_the_planned_peak(engine):
    data = batches(5)
    model = small()
    step = model.hybridize(optimizer=SGD(model.parameters(), lr=0.1, momentum=0.9))
    step(*data[0])
    allocs = engine.pool.num_allocs
    engine.pool.reset_peak()
    for x, y in data[1:]:
        step(x, y)
    assert engine.pool.num_allocs == allocs
    assert engine.pool.peak_bytes == engine.pool.live_bytes == step.plan.peak_bytes


def test_a_budget_makes_it_recompute_with_the_same_results(engine):
    data = batches(3, batch=64, dim=16, classes=4)
    with use_engine(NaiveEngine()):  # its own pool: the reference does not count here
        ref_losses, ref_flat, ref = hybrid(deep, data, lr=0.05, momentum=0.9)
    full = ref.plan
    budget = full.persistent_bytes + int(0.75 * full.layout.arena_bytes)
    model = deep()
    step = compile_step(model, softmax_cross_entropy, SGD(model.parameters(), lr=0.05,
                                                          momentum=0.9), budget)
    losses = [step(*data[0])]
    plan = step.plan
    assert plan.peak_bytes <= budget < full.peak_bytes
    assert plan.program.dropped and plan.recompute_flops > 0
    allocs = engine.pool.num_allocs
    engine.pool.reset_peak()
    losses += [step(x, y) for x, y in data[1:]]
    assert engine.pool.peak_bytes <= budget and engine.pool.num_allocs == allocs
    assert losses == ref_losses and np.array_equal(model.get_flat(), ref_flat)
    assert plan.layout.boundary_live < full.layout.boundary_live  # fewer activations kept


def test_too_small_a_budget_names_the_smallest_that_fits():
    data = batches(2, batch=64, dim=16, classes=4)
    model = deep()
    opt = SGD(model.parameters(), lr=0.05)
    with pytest.raises(PlanBudgetError, match="too small for even the most recomputing") as err:
        compile_step(model, softmax_cross_entropy, opt, budget_bytes=100_000)(*data[0])
    assert isinstance(err.value, MemoryBudgetError)
    smallest = err.value.min_budget
    assert f"smallest budget that would fit is {smallest} bytes" in str(err.value)
    step = compile_step(model, softmax_cross_entropy, opt, budget_bytes=smallest)
    step(*data[0])
    assert step.plan.peak_bytes <= smallest


def test_a_new_input_shape_retraces_and_still_matches_eager():
    data = batches(2) + batches(1, batch=5, seed=1) + batches(1, seed=2)
    ref_losses, ref_flat = eager(small, data, lr=0.1, momentum=0.9)
    losses, flat, step = hybrid(small, data, lr=0.1, momentum=0.9)
    assert step.traces == 2  # 16 rows, then 5; back to 16 reuses the first plan
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    np.testing.assert_allclose(flat, ref_flat, rtol=1e-6, atol=1e-7)


def test_eager_mutation_error_is_still_raised_after_hybridizing():
    model = small()
    opt = SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    model.hybridize(optimizer=opt)(x, y)
    loss = softmax_cross_entropy(model(x), y)
    opt.step()  # writes the weights the forward saved
    with pytest.raises(MutationError, match="'linear'.*weight"):
        loss.backward()


class InplaceAfterSave(Module):
    def __init__(self):
        super().__init__()
        self.fc = Dense(6, 3, seed=0)

    def forward(self, x):
        h = relu(self.fc(x))  # relu saves its output
        relu_(h)  # ... which this overwrites: eager backward would raise
        return h


def test_tracing_raises_the_mutation_error_eager_backward_would():
    model = InplaceAfterSave()
    x, y = np.ones((4, 6), np.float32), np.zeros(4, np.int64)
    with pytest.raises(MutationError, match="'relu'"):
        softmax_cross_entropy(model(x), y).backward()
    step = compile_step(model, softmax_cross_entropy, SGD(model.parameters(), lr=0.1))
    with pytest.raises(MutationError, match="'relu'.*'relu_'"):
        step(x, y)


class Regressor(Module):
    """Views, in-place ops, means and MSE: the other planned kernels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = Dense(12, 8, seed=0), Dense(8, 12, seed=1)

    def forward(self, x):
        h = relu_(self.a(reshape(x, -1, 12)))
        return reshape(self.b(h) - mean(h, axis=1, keepdims=True), x.shape)


def test_views_inplace_ops_and_mse_match_eager():
    rng = np.random.default_rng(3)
    data = [(rng.standard_normal((3, 4, 12)).astype(np.float32),
             rng.standard_normal((3, 4, 12)).astype(np.float32)) for _ in range(3)]
    ref_losses, ref_flat = eager(Regressor, data, loss_fn=mse, lr=0.05, momentum=0.9)
    losses, flat, _ = hybrid(Regressor, data, loss_fn=mse, lr=0.05, momentum=0.9)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    np.testing.assert_allclose(flat, ref_flat, rtol=1e-6, atol=1e-7)


def _scale_fwd(ctx, x, k):
    return np.multiply(x, k, out=ctx.alloc(x.shape))


scale_p = Primitive("test_scale", _scale_fwd)  # no planned kernel: runs through the fallback
defvjp(scale_p, lambda ctx, g: g * ctx.params["k"])


class Scaled(Module):
    def __init__(self):
        super().__init__()
        self.fc = Dense(20, 5, seed=0)

    def forward(self, x):
        return apply(scale_p, self.fc(x), k=0.5)


@pytest.mark.parametrize("name", ["fallback", "cnn", "lstm", "mobilenet"])
def test_ops_without_planned_kernels_run_through_the_fallback(name):
    rng = np.random.default_rng(0)
    loss_fn = softmax_cross_entropy
    if name == "fallback":
        make, data = Scaled, batches(3)
    elif name == "cnn":
        def make():
            return build_model("cnn", input_dim=64, channels=(4, 8), hidden=16)
        data = [(rng.standard_normal((8, 64)).astype(np.float32), rng.integers(0, 10, 8))
                for _ in range(3)]
    elif name == "mobilenet":  # depthwise and BatchNorm + ReLU: VJPs stored into the plan
        def make():
            return build_model("mobilenet", input_shape=(12, 12, 1), channels=(4, 8, 8))
        data = [(rng.standard_normal((6, 144)).astype(np.float32), rng.integers(0, 10, 6))
                for _ in range(3)]
    else:
        def make():
            return build_model("lstm", vocab_size=30, embed_dim=8, hidden=12)
        data = [(rng.integers(0, 30, (4, 5)), rng.integers(0, 30, (4, 5))) for _ in range(3)]

        def loss_fn(logits, y):
            return softmax_cross_entropy(logits, reshape(y, -1))
    ref_losses, ref_flat = eager(make, data, loss_fn=loss_fn, lr=0.05, momentum=0.9)
    losses, flat, _ = hybrid(make, data, loss_fn=loss_fn, lr=0.05, momentum=0.9)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(flat, ref_flat, rtol=1e-5, atol=1e-6)


def test_mobilenet_recomputed_under_a_budget_matches_its_unbudgeted_plan():
    """Depthwise and BatchNorm + ReLU forwards run again in backward, and their VJPs store
    into the planned buffers: the same bits as the plan that keeps everything."""
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((8, 14, 14, 1)).astype(np.float32), rng.integers(0, 10, 8))
            for _ in range(2)]

    def make():
        return build_model("mobilenet", input_shape=(14, 14, 1), channels=(4, 8, 8))

    with use_engine(NaiveEngine()):
        ref_losses, ref_flat, ref = hybrid(make, data, lr=0.05, momentum=0.9)
    recomputed = set()
    for share in (0.8, 0.7, 0.6, 0.5):  # tighter budgets until those forwards run again
        budget = ref.plan.persistent_bytes + int(share * ref.plan.layout.arena_bytes)
        with use_engine(NaiveEngine()):
            try:
                losses, flat, step = hybrid(make, data, budget=budget, lr=0.05, momentum=0.9)
            except PlanBudgetError:
                break
        assert step.plan.peak_bytes <= budget
        assert losses == ref_losses and np.array_equal(flat, ref_flat)
        recomputed = {i.name for i in step.plan.program.instrs if i.phase == "re"}
        if recomputed >= {"depthwise_conv2d", "batch_norm_relu"}:
            break
    assert recomputed >= {"depthwise_conv2d", "batch_norm_relu"}


def test_hybridized_step_under_the_threaded_engine():
    data = batches(3)
    ref_losses, ref_flat = eager(small, data, lr=0.1, momentum=0.9)
    eng = ThreadedEngine(num_workers=2)
    try:
        with use_engine(eng):
            losses, flat, _ = hybrid(small, data, lr=0.1, momentum=0.9)
    finally:
        eng.shutdown()
    assert losses == ref_losses and np.array_equal(flat, ref_flat)


def test_bad_arguments():
    model = small()
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="budget_bytes"):
        compile_step(model, softmax_cross_entropy, opt, budget_bytes=0)
    other = Tensor(np.ones((20, 5), np.float32), requires_grad=True)
    step = compile_step(model, lambda out, y: softmax_cross_entropy(out + (other * 1.0), y),
                        opt)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        step(*batches(1)[0])


def test_pure_layers_without_kernels_are_recomputed_under_a_budget():
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((32, 64)).astype(np.float32), rng.integers(0, 10, 32))
            for _ in range(2)]

    def make():
        return build_model("cnn", input_dim=64, channels=(8, 16), hidden=32)

    with use_engine(NaiveEngine()):
        ref_losses, ref_flat, ref = hybrid(make, data, lr=0.05, momentum=0.9)
    budget = ref.plan.persistent_bytes + int(0.8 * ref.plan.layout.arena_bytes)
    losses, flat, step = hybrid(make, data, budget=budget, lr=0.05, momentum=0.9)
    assert step.plan.peak_bytes <= budget
    assert any(step.plan.program.instrs[i].name == "conv2d" and
               step.plan.program.instrs[i].phase == "re"
               for i in range(len(step.plan.program.instrs)))
    assert losses == ref_losses and np.array_equal(flat, ref_flat)


def test_norm_layers_module_buffers_and_another_optimizer_match_eager():
    from fedcore.nn import ReLU, Sequential
    from fedcore.nn.norm import BatchNorm, LayerNorm
    from fedcore.optim.adam import Adam

    def make():
        m = Sequential(Dense(20, 16, seed=0), BatchNorm(16), ReLU(), Dense(16, 16, seed=1),
                       LayerNorm(16), ReLU(), Dense(16, 5, seed=2))
        m.flatten_parameters()
        return m

    data = batches(3)
    runs = []
    for hybridized in (False, True):
        model = make()
        opt = Adam(model.parameters(), lr=0.01)
        if hybridized:
            step = compile_step(model, softmax_cross_entropy, opt)
            losses = [step(x, y) for x, y in data]
        else:
            losses = []
            for x, y in data:
                opt.zero_grad()
                loss = softmax_cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        runs.append((losses, model.get_flat(), model[1].running.data.copy()))
    (el, ef, er), (hl, hf, hr) = runs
    np.testing.assert_allclose(hl, el, rtol=1e-6)
    np.testing.assert_allclose(hf, ef, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hr, er, rtol=1e-6, atol=1e-7)  # running stats updated once
