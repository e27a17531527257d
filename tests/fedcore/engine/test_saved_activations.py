"""What a recorded node keeps for its backward: nothing for inputs that need no gradient, and
a recipe (not the array) for a result a cheap op can recompute. Gradients against PyTorch."""

import numpy as np
import pytest

from fedcore.engine import Tensor, float64_mode, get_engine, matmul, reshape, rms_norm, swiglu
from fedcore.engine.autograd import Remat

torch = pytest.importorskip("torch")

rng = np.random.default_rng(7)


def test_a_frozen_weight_keeps_no_input():
    x = Tensor(rng.standard_normal((64, 32)).astype(np.float32), requires_grad=True)
    w_frozen = Tensor(rng.standard_normal((32, 16)).astype(np.float32))
    w_trained = Tensor(rng.standard_normal((32, 16)).astype(np.float32), requires_grad=True)
    frozen, trained = matmul(x, w_frozen), matmul(x, w_trained)
    assert frozen._node.in_vars[0] is None and frozen._node.in_vars[1] is not None
    assert trained._node.in_vars[0] is not None and trained._node.in_vars[1] is not None
    (frozen.sum() + trained.sum()).backward()
    np.testing.assert_allclose(x.grad, np.broadcast_to(
        w_frozen.data.sum(1) + w_trained.data.sum(1), x.shape), rtol=1e-5)


def test_norm_and_gate_outputs_are_recomputed_not_kept():
    d, hid = 8, 12
    x = Tensor(rng.standard_normal((2, 5, d)).astype(np.float32), requires_grad=True)
    gamma = Tensor(np.ones(d, np.float32), requires_grad=True)
    wg = Tensor(rng.standard_normal((d, hid)).astype(np.float32), requires_grad=True)
    wu = Tensor(rng.standard_normal((d, hid)).astype(np.float32), requires_grad=True)
    wd = Tensor(rng.standard_normal((hid, d)).astype(np.float32), requires_grad=True)
    pool = get_engine().pool
    before = pool.live_bytes
    rows = reshape(rms_norm(x, gamma), 10, d)
    g, u = matmul(rows, wg), matmul(rows, wu)
    h = swiglu(g, u)
    out = matmul(h, wd)
    assert type(g._node.in_vars[0]) is Remat and type(out._node.in_vars[0]) is Remat
    del rows, h
    # kept: g, u (swiglu's own inputs), the norm's rstd, the output; not the norm's output
    # (10 x 8) nor the gate's (10 x 12)
    assert pool.live_bytes - before == 4 * (10 * hid * 2 + 10 + 10 * d)


@pytest.mark.parametrize("frozen", [False, True])
def test_recomputed_activations_give_torch_gradients(frozen):
    d, hid = 6, 10
    arrays = [rng.standard_normal((3, 4, d)), rng.standard_normal(d) + 1,
              rng.standard_normal((d, hid)), rng.standard_normal((d, hid)),
              rng.standard_normal((hid, d))]
    wrt = (0,) if frozen else (0, 1, 2, 3, 4)  # frozen: LoRA's base, only the input's grad

    with float64_mode():
        ts = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
        rows = reshape(rms_norm(ts[0], ts[1]), 12, d)  # one norm, two consumers
        out = matmul(swiglu(matmul(rows, ts[2]), matmul(rows, ts[3])), ts[4])
        del rows
        r = rng.standard_normal(out.shape)
        (out * r).sum().backward()
        ours = [ts[i].grad.copy() for i in wrt]
    tt = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    n = torch.nn.functional.rms_norm(tt[0], (d,), tt[1], eps=1e-6).reshape(12, d)
    tout = (torch.nn.functional.silu(n @ tt[2]) * (n @ tt[3])) @ tt[4]
    (tout * torch.tensor(r)).sum().backward()
    for i, g in zip(wrt, ours, strict=True):
        np.testing.assert_allclose(g, tt[i].grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=f"gradient of input {i}")


def test_one_recomputation_serves_every_consumer(monkeypatch):
    from fedcore.engine.rownorm import rms_norm_p

    calls = []
    forward = rms_norm_p.forward
    monkeypatch.setattr(rms_norm_p, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    d = 8
    x = Tensor(rng.standard_normal((4, d)).astype(np.float32), requires_grad=True)
    gamma = Tensor(np.ones(d, np.float32) * 1.5, requires_grad=True)
    ws = [Tensor(rng.standard_normal((d, 5)).astype(np.float32), requires_grad=True)
          for _ in range(3)]
    n = rms_norm(x, gamma)
    outs = [matmul(n, w) for w in ws]  # q, k and v after one norm
    recipe = outs[0]._node.in_vars[0].recipe
    assert all(o._node.in_vars[0].recipe is recipe for o in outs) and recipe.users == 3
    del n
    calls.clear()
    (outs[0].sum() + outs[1].sum() + outs[2].sum()).backward()
    assert len(calls) == 1  # recomputed once, not once per consumer
    assert recipe.result is None and recipe.users == 0  # dropped after the last consumer
    xn = x.data / np.sqrt((x.data ** 2).mean(-1, keepdims=True) + 1e-6) * 1.5
    for w in ws:
        np.testing.assert_allclose(w.grad, xn.T @ np.ones((4, 5), np.float32), rtol=1e-5)
