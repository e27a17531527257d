"""SGD against a hand-written numpy reference (PyTorch's update rule)."""

import numpy as np
import pytest

from fedcore.engine import Tensor
from fedcore.nn import Dense, Sequential
from fedcore.optim import SGD


def reference(params, grads_per_step, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    params = [p.astype(np.float64).copy() for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            d = g.astype(np.float64) + weight_decay * p
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            p -= lr * d
    return params


CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
]


def run_steps(params, opt, grads_per_step):
    for grads in grads_per_step:
        opt.zero_grad()
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # copies into the (possibly flat) gradient buffer
        opt.step()


@pytest.mark.parametrize("config", CONFIGS)
def test_sgd_matches_reference_on_loose_tensors(config):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(3, 2), (4,)]]
    steps = [[rng.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(4)]
    params = [Tensor(a.copy(), requires_grad=True) for a in init]
    opt = SGD(params, **config)
    run_steps(params, opt, steps)
    for p, ref in zip(params, reference(init, steps, **config), strict=True):
        np.testing.assert_allclose(p.data, ref, rtol=1e-5, atol=1e-6)
    assert opt.step_count == 4


@pytest.mark.parametrize("config", CONFIGS)
def test_sgd_flat_path_matches_reference(config, engine):
    rng = np.random.default_rng(1)
    model = Sequential(Dense(3, 4, seed=0), Dense(4, 2, seed=1))
    model.flatten_parameters()
    params = model.parameters()
    init = [p.data.copy() for p in params]
    steps = [[rng.standard_normal(a.shape).astype(np.float32) for a in init] for _ in range(4)]
    opt = SGD(params, **config)
    ops_before = engine.num_ops
    run_steps(params, opt, steps)
    # per step: 1 zero_grad + 4 grad copies + ONE update for the whole flat buffer
    assert engine.num_ops - ops_before == 4 * (1 + len(params) + 1)
    for p, ref in zip(params, reference(init, steps, **config), strict=True):
        np.testing.assert_allclose(p.data, ref, rtol=1e-5, atol=1e-6)


def test_params_without_grad_are_skipped_and_lr_is_settable():
    a = Tensor(np.ones(2), requires_grad=True)
    b = Tensor(np.ones(2), requires_grad=True)
    opt = SGD([a, b], lr=0.5)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, [0.5, 0.5])
    np.testing.assert_allclose(b.data, [1.0, 1.0])
    opt.lr = 0.25
    opt.step()
    np.testing.assert_allclose(a.data, [0.25, 0.25])
    assert opt.lr == 0.25
    with pytest.raises(ValueError):
        opt.lr = -1.0


def test_invalid_arguments():
    p = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="leaf"):
        SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        SGD([p], lr=0.1, momentum=-0.5)
