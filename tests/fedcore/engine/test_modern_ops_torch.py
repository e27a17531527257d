"""Attention, RoPE, RMSNorm, SwiGLU, tied heads, depthwise conv, global pooling and the fused
training BatchNorm (+ ReLU) against
PyTorch's forward and gradients (float64, so tolerances are tight)."""

import sys

import numpy as np
import pytest

from fedcore.engine import (
    MemoryPool,
    NaiveEngine,
    Tensor,
    attention,
    batch_moments,
    batch_moments_centred,
    batch_norm,
    batch_norm_train,
    depthwise_conv2d,
    float64_mode,
    global_avg_pool2d,
    matmul_nt,
    no_grad,
    rms_norm,
    rope,
    silu,
    swiglu,
    use_engine,
)
from fedcore.engine.attention import block_rows

torch = pytest.importorskip("torch")

rng = np.random.default_rng(5)


def run_both(fe_fn, th_fn, arrays, wrt):
    """Forward of both, then the gradients of sum(out * R) for the inputs in `wrt`."""
    with float64_mode():
        ts = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
        out = fe_fn(*ts)
        r = rng.standard_normal(out.shape)
        (out * r).sum().backward()
        fe_out = out.data.copy()
        fe_grads = [ts[i].grad.copy() for i in wrt]
    tt = [torch.tensor(a, dtype=torch.float64, requires_grad=i in wrt)
          for i, a in enumerate(arrays)]
    tout = th_fn(*tt)
    (tout * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(fe_out, tout.detach().numpy(), rtol=1e-9, atol=1e-10)
    for i, g in zip(wrt, fe_grads, strict=True):
        np.testing.assert_allclose(g, tt[i].grad.numpy(), rtol=1e-8, atol=1e-10,
                                   err_msg=f"gradient of input {i}")


def torch_attention(q, k, v, causal):
    # (B, T, H, D) -> torch's (B, H, T, D); GQA by repeating each kv head over its group
    h, hk = q.shape[2], k.shape[2]
    qt, kt, vt = (a.transpose(1, 2) for a in (q, k, v))
    kt = kt.repeat_interleave(h // hk, dim=1)
    vt = vt.repeat_interleave(h // hk, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    return out.transpose(1, 2)


@pytest.mark.parametrize("b, t, h, hk, d, causal, block", [
    (2, 7, 4, 4, 8, True, None),   # one block
    (2, 13, 4, 2, 8, True, 4),     # GQA, several blocks, a ragged last block
    (1, 9, 6, 2, 4, True, 1),      # one row per block
    (2, 6, 2, 1, 8, False, 4),     # multi-query, no mask
])
def test_attention_matches_torch(b, t, h, hk, d, causal, block):
    q = rng.standard_normal((b, t, h, d))
    k = rng.standard_normal((b, t, hk, d))
    v = rng.standard_normal((b, t, hk, d))
    run_both(lambda q_, k_, v_: attention(q_, k_, v_, causal=causal, block=block),
             lambda q_, k_, v_: torch_attention(q_, k_, v_, causal), [q, k, v], (0, 1, 2))


def test_attention_in_groups_of_sequences_matches_torch(monkeypatch):
    # one group holds 2 of the 5 sequences (2, 2, then a ragged 1), forward and backward
    monkeypatch.setattr(sys.modules["fedcore.engine.attention"], "GROUP_ELEMS", 2 * 4 * 3 * 9)
    q = rng.standard_normal((5, 9, 4, 8))
    k = rng.standard_normal((5, 9, 2, 8))
    v = rng.standard_normal((5, 9, 2, 8))
    run_both(lambda q_, k_, v_: attention(q_, k_, v_, causal=True, block=3),
             lambda q_, k_, v_: torch_attention(q_, k_, v_, True), [q, k, v], (0, 1, 2))


def test_attention_blocks_shrink_as_sequences_grow():
    # the scratch of one block (B * H * rows * T) stays bounded: memory linear in T
    sizes = [block_rows(1, 8, t, t, None) * 8 * t for t in (256, 512, 1024, 2048, 4096)]
    assert max(sizes) <= 1 << 20
    assert block_rows(1, 8, 4096, 4096, None) < 4096


def test_attention_rejects_bad_shapes():
    q = np.zeros((1, 4, 3, 8), np.float32)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, np.zeros((1, 4, 2, 8), np.float32), np.zeros((1, 4, 2, 8), np.float32))
    with pytest.raises(ValueError, match="causal"):
        attention(q, np.zeros((1, 5, 3, 8), np.float32), np.zeros((1, 5, 3, 8), np.float32))


def torch_rope(x, base=10000.0, offset=0):
    t, d = x.shape[1], x.shape[-1]
    inv = base ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d)
    ang = torch.outer(torch.arange(offset, offset + t, dtype=torch.float64), inv)
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def test_rope_matches_torch():
    x = rng.standard_normal((2, 5, 3, 8))
    run_both(lambda a: rope(a, offset=3), lambda a: torch_rope(a, offset=3), [x], (0,))


def test_rope_keeps_norms_and_relative_positions():
    x = rng.standard_normal((1, 6, 1, 4)).astype(np.float32)
    y = rope(x).data
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1),
                               rtol=1e-5)


def test_rms_norm_matches_torch():
    x = rng.standard_normal((3, 4, 10))
    gamma = rng.standard_normal(10)
    run_both(lambda a, g: rms_norm(a, g, eps=1e-6),
             lambda a, g: torch.nn.functional.rms_norm(a, (10,), g, eps=1e-6), [x, gamma],
             (0, 1))


def test_silu_and_swiglu_match_torch():
    a = rng.standard_normal((5, 6)) * 4
    b = rng.standard_normal((5, 6))
    run_both(silu, torch.nn.functional.silu, [a], (0,))
    run_both(swiglu, lambda x, y: torch.nn.functional.silu(x) * y, [a, b], (0, 1))


def test_matmul_nt_matches_torch():
    a, w = rng.standard_normal((4, 6)), rng.standard_normal((9, 6))
    run_both(matmul_nt, lambda x, y: x @ y.T, [a, w], (0, 1))


@pytest.mark.parametrize("stride, padding, kernel", [
    (1, 1, (3, 3)), (2, 1, (3, 3)), (1, 0, (3, 3)), (2, 2, (3, 3)),
    ((1, 2), (0, 1), (3, 3)),  # a stride along the width only: two column phases
    (3, 1, (3, 2)),            # stride as long as the kernel: one tap per phase
    (4, 0, (3, 3)),            # stride beyond the kernel: rows and columns no window reads
    ((2, 3), (2, 1), (5, 4)),  # uneven taps per phase
    (1, 3, (3, 3)), (2, (0, 3), (2, 2)),  # padding beyond the kernel
])
def test_depthwise_conv_matches_torch(stride, padding, kernel):
    x = rng.standard_normal((2, 9, 11, 5))
    w = rng.standard_normal((*kernel, 5))
    b = rng.standard_normal(5)

    def th(x_, w_, b_):  # NHWC <-> NCHW; torch's depthwise weight is (C, 1, KH, KW)
        out = torch.nn.functional.conv2d(x_.permute(0, 3, 1, 2), w_.permute(2, 0, 1)[:, None],
                                         b_, stride=stride, padding=padding, groups=5)
        return out.permute(0, 2, 3, 1)

    run_both(lambda x_, w_, b_: depthwise_conv2d(x_, w_, b_, stride, padding), th, [x, w, b],
             (0, 1, 2))


@pytest.mark.parametrize("budget", [None, 1 << 30])
def test_depthwise_keeps_tiled_taps_for_backward_only_without_a_budget(budget):
    """The forward's tiled taps serve the input gradient (reversed) unless the pool has a
    memory budget, where they are tiled again in backward: the same gradients either way."""
    x, w, b = (rng.standard_normal(s) for s in ((2, 9, 11, 5), (3, 3, 5), (5,)))

    def fe(x_, w_, b_):
        out = depthwise_conv2d(x_, w_, b_, 2, 1)
        assert (out._node.ctx.taps is None) == (budget is not None)
        return out

    def th(x_, w_, b_):
        out = torch.nn.functional.conv2d(x_.permute(0, 3, 1, 2), w_.permute(2, 0, 1)[:, None],
                                         b_, stride=2, padding=1, groups=5)
        return out.permute(0, 2, 3, 1)

    with use_engine(NaiveEngine(MemoryPool(budget_bytes=budget))):
        run_both(fe, th, [x, w, b], (0, 1, 2))


def test_global_avg_pool_matches_torch():
    x = rng.standard_normal((3, 4, 5, 6))
    run_both(global_avg_pool2d, lambda a: a.mean(dim=(1, 2)), [x], (0,))


@pytest.mark.parametrize("relu", [False, True])
# (2, 24, 32, 8): 1536 rows of 8, which the elementwise passes fold into two rows of 6144
@pytest.mark.parametrize("shape", [(2, 5, 3, 6), (7, 4), (2, 24, 32, 8)])
def test_training_batch_norm_matches_torch(relu, shape):
    # the fused op's input gradient runs through the batch moments; the running statistics
    # are updated as torch's (unbiased variance, momentum 0.1)
    x = rng.standard_normal(shape) * 3 + 1
    gamma, beta = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    with float64_mode():
        running = Tensor(np.stack([np.zeros(shape[-1]), np.ones(shape[-1])]))
    t_mean, t_var = torch.zeros(shape[-1], dtype=torch.float64), torch.ones(shape[-1],
                                                                              dtype=torch.float64)

    def th(x_, g_, b_):
        moved = x_.movedim(-1, 1)
        out = torch.nn.functional.batch_norm(moved, t_mean, t_var, g_, b_, training=True)
        out = out.movedim(1, -1)
        return torch.relu(out) if relu else out

    run_both(lambda x_, g_, b_: batch_norm(x_, g_, b_, running, relu=relu), th,
             [x, gamma, beta], (0, 1, 2))
    np.testing.assert_allclose(running.data, np.stack([t_mean.numpy(), t_var.numpy()]),
                               rtol=1e-9)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("centred", [False, True])
def test_batch_norm_train_on_plain_or_centred_moments_matches_torch(centred, relu):
    # (2, C) moments: the op subtracts the mean itself (and its backward reuses that buffer);
    # batch_moments_centred's (2 + M, C) rows hand it x - mean: the same values, gradients
    x = rng.standard_normal((3, 4, 5, 6)) * 2 - 3
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)

    def fe(x_, g_, b_):
        with no_grad():
            stats = (batch_moments_centred if centred else batch_moments)(x_)
        return batch_norm_train(x_, stats, g_, b_, relu=relu)

    def th(x_, g_, b_):
        out = torch.nn.functional.batch_norm(x_.movedim(-1, 1), None, None, g_, b_,
                                             training=True).movedim(1, -1)
        return torch.relu(out) if relu else out

    run_both(fe, th, [x, gamma, beta], (0, 1, 2))


def test_centred_moments_are_mean_var_then_x_minus_mean():
    x = rng.standard_normal((4, 3, 5)) + 2
    with float64_mode():
        out = batch_moments_centred(Tensor(x)).data
    flat = x.reshape(-1, 5)
    np.testing.assert_allclose(out[0], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out[1], flat.var(0), rtol=1e-12)
    np.testing.assert_allclose(out[2:], flat - flat.mean(0), rtol=1e-12, atol=1e-12)
