"""Adam / AdamW against a hand-written numpy reference (PyTorch's update rule)."""

import numpy as np
import pytest

from fedcore.engine import Tensor
from fedcore.nn import Dense, Sequential
from fedcore.optim import Adam, AdamW
from fedcore.optim import adam as adam_module


def reference(params, grads_per_step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False, lrs=None):
    b1, b2 = betas
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        step_lr = lrs[t - 1] if lrs else lr
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g.astype(np.float64)
            if weight_decay and not decoupled:
                g = g + weight_decay * p
            if weight_decay and decoupled:
                p *= 1 - step_lr * weight_decay
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            p -= step_lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, decoupled=True),
]


def run(params, opt, steps, lrs=None):
    for k, grads in enumerate(steps):
        if lrs:
            opt.lr = lrs[k]
        opt.zero_grad()
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()


def make_steps(init, n, seed):
    r = np.random.default_rng(seed)
    return [[r.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(n)]


@pytest.mark.parametrize("config", CONFIGS)
def test_adam_matches_reference_on_loose_tensors(config):
    r = np.random.default_rng(0)
    init = [r.standard_normal(s).astype(np.float32) for s in [(3, 2), (5,)]]
    steps = make_steps(init, 5, 1)
    params = [Tensor(a.copy(), requires_grad=True) for a in init]
    opt = Adam(params, **config)
    run(params, opt, steps)
    for p, ref in zip(params, reference(init, steps, **config), strict=True):
        np.testing.assert_allclose(p.data, ref, rtol=1e-5, atol=1e-6)
    assert opt.step_count == opt.state_step == 5


@pytest.mark.parametrize("config", CONFIGS)
def test_adam_flat_path_is_one_op_and_matches(config, engine, monkeypatch):
    monkeypatch.setattr(adam_module, "CHUNK", 7)  # several chunks, and a ragged last one
    model = Sequential(Dense(3, 4, seed=0), Dense(4, 2, seed=1))
    model.flatten_parameters()
    params = model.parameters()
    init = [p.data.copy() for p in params]
    steps = make_steps(init, 4, 2)
    lrs = [config["lr"], config["lr"] / 2, config["lr"] * 2, config["lr"]]
    opt = Adam(params, **config)
    before = engine.num_ops
    run(params, opt, steps, lrs)
    assert engine.num_ops - before == 4 * (1 + len(params) + 1)
    for p, ref in zip(params, reference(init, steps, lrs=lrs, **config), strict=True):
        np.testing.assert_allclose(p.data, ref, rtol=1e-5, atol=1e-6)


def test_adamw_is_decoupled_adam():
    init = [np.linspace(-1, 1, 6).astype(np.float32)]
    steps = make_steps(init, 3, 3)
    a, b = Tensor(init[0].copy(), requires_grad=True), Tensor(init[0].copy(), requires_grad=True)
    run([a], AdamW([a], lr=0.02), steps)
    run([b], Adam([b], lr=0.02, weight_decay=0.01, decoupled=True), steps)
    np.testing.assert_array_equal(a.data, b.data)
    ref = reference(init, steps, lr=0.02, weight_decay=0.01, decoupled=True)[0]
    np.testing.assert_allclose(a.data, ref, rtol=1e-5, atol=1e-6)


def test_adam_state_is_flat_and_params_without_grad_are_skipped():
    a = Tensor(np.ones(2), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, [0.9, 0.9], rtol=1e-6)  # first step moves by lr
    np.testing.assert_array_equal(b.data, np.ones(3))
    assert opt._states["exp_avg"].data.shape == (5,)


def test_invalid_arguments():
    p = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="eps"):
        Adam([p], eps=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW([p], weight_decay=-1.0)
