"""The fused output head + cross-entropy (`fedcore.engine.head`) against PyTorch's loss and
gradients, its row blocks, its deferred logits in the tiny GPT, and what it never holds."""

from contextlib import nullcontext

import numpy as np
import pytest

from fedcore.engine import Tensor, float64_mode, get_engine, no_grad, softmax_cross_entropy
from fedcore.engine import head as head_mod
from fedcore.engine.head import DeferredLogits, head_cross_entropy
from fedcore.engine.quant import int8_tensor, quantize_rows
from fedcore.models import build_model
from tests.tolerances import assert_close_to_operands

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _case(rng, n, d, v, tied):
    h = rng.standard_normal((n, d))
    w = rng.standard_normal((v, d) if tied else (d, v)) * 0.5
    b = rng.standard_normal(v)
    y = rng.integers(0, v, n)
    return h, w, b, y


def _torch_side(h, w, b, y, tied, scale, dtype):
    th, tw, tb = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (h, w, b))
    logits = th @ tw.T if tied else th @ tw + tb
    loss = F.cross_entropy(logits, torch.tensor(y))
    (loss * scale).backward()
    probs = torch.softmax(logits.detach(), 1).numpy().astype(np.float64)
    return loss.item(), th.grad.numpy(), tw.grad.numpy(), tb.grad, probs, \
        logits.detach().numpy().astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tied, bias", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("block_rows", [1, 7, 64])  # one row a block, a ragged last block, one
def test_matches_torch(monkeypatch, dtype, tied, bias, block_rows):
    rng = np.random.default_rng(block_rows)
    n, d, v = 37, 12, 50
    monkeypatch.setattr(head_mod, "HEAD_ELEMS", block_rows * v)
    h, w, b, y = _case(rng, n, d, v, tied)
    scale = 2.5  # an incoming gradient other than 1
    with float64_mode() if dtype == np.float64 else nullcontext():
        th, tw = Tensor(h, requires_grad=True), Tensor(w, requires_grad=True)
        tb = Tensor(b, requires_grad=True) if bias else None
        loss = head_cross_entropy(th, tw, y, tb, tied=tied)
        (loss * scale).backward()
    want = _torch_side(h.astype(dtype), w.astype(dtype), b.astype(dtype) if bias else
                       np.zeros(v, dtype), y, tied, scale, torch.float64 if dtype == np.float64
                       else torch.float32)
    t_loss, t_dh, t_dw, t_db, probs, logits = want
    # magnitudes of the terms each result sums: the loss's log-sum-exp and picked logits;
    # the gradients' |softmax - onehot| / N * scale against |W| and |h|
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), y] = 1
    g = (probs + onehot) * (scale / n)
    aw, ah = np.abs(w), np.abs(h)
    ulps = 8 * (d + v)
    lse_mag = np.abs(logits).max(1) + np.log(v)
    assert_close_to_operands(loss.item(), t_loss, lse_mag.mean() + np.abs(logits).mean(),
                             ulps, dtype)
    assert_close_to_operands(th.grad, t_dh, g @ (aw if tied else aw.T), ulps, dtype)
    assert_close_to_operands(tw.grad, t_dw, g.T @ ah if tied else ah.T @ g, ulps * n, dtype)
    if bias:
        assert_close_to_operands(tb.grad, t_db.numpy(), g.sum(0), ulps * n, dtype)


def test_frozen_weight_gets_no_gradient():
    rng = np.random.default_rng(3)
    h, w, _, y = _case(rng, 20, 8, 30, True)
    th, tw = Tensor(h, requires_grad=True), Tensor(w)
    loss = head_cross_entropy(th, tw, y)
    loss.backward()
    assert tw.grad is None
    ref = Tensor(h.astype(np.float32), requires_grad=True)
    softmax_cross_entropy(ref @ Tensor(w.T.copy()), y).backward()
    assert_close_to_operands(th.grad, ref.grad, np.abs(ref.grad).max() + 1e-3, 64, np.float32)


def test_rejects_bad_labels_and_shapes():
    rng = np.random.default_rng(4)
    h, w, _, _ = _case(rng, 5, 4, 6, True)
    th, tw = Tensor(h, requires_grad=True), Tensor(w)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        head_cross_entropy(th, tw, np.array([0, 1, 2, 3, 6])).item()
    with pytest.raises(TypeError, match="integers"):
        head_cross_entropy(th, tw, np.zeros(5, np.float32)).item()
    with pytest.raises(ValueError, match="does not match"):
        head_cross_entropy(th, tw, np.zeros(4, np.int64)).item()
    with pytest.raises(ValueError, match="does not fit"):
        head_cross_entropy(th, Tensor(w.T.copy()), np.zeros(5, np.int64)).item()


def test_backward_twice_raises():
    rng = np.random.default_rng(5)
    h, w, _, y = _case(rng, 6, 4, 9, True)
    th = Tensor(h, requires_grad=True)
    loss = head_cross_entropy(th, Tensor(w), y)
    loss.backward()
    with pytest.raises(RuntimeError):
        loss.backward()


GPT = dict(vocab_size=40, embed_dim=16, hidden=24, n_layers=2, n_heads=4, n_kv_heads=2)


def _grads(model, x, y, defer):
    for p in model.parameters():
        p.grad = None
    out = model(Tensor(x))
    assert isinstance(out, DeferredLogits)
    if not defer:
        out.data  # noqa: B018 - computing the logits makes the loss the plain one
    loss = softmax_cross_entropy(out, y)
    loss.backward()
    return loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("lora", [None, dict(rank=2, alpha=4, targets=["attn", "mlp"],
                                             base="int8")])
def test_tiny_gpt_fused_and_plain_losses_agree(lora):
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 40, (3, 8)), rng.integers(0, 40, 24)
    model = build_model("tiny_gpt", seed=0, lora=lora, **GPT)
    if lora is not None:  # B starts at zero: make the adapters matter
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape) * 0.1
    fused_loss, fused = _grads(model, x, y, True)
    plain_loss, plain = _grads(model, x, y, False)
    np.testing.assert_allclose(fused_loss, plain_loss, rtol=1e-5)
    assert fused.keys() == plain.keys()
    for n, g in fused.items():
        assert_close_to_operands(g, plain[n], np.abs(plain[n]).max(), 256, np.float32)


def test_evaluation_gets_plain_logits():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 40, (2, 5))
    model = build_model("tiny_gpt", seed=0, **GPT)
    with no_grad():
        out = model(Tensor(x))
    assert type(out) is Tensor and out.shape == (10, 40)
    deferred = model(Tensor(x))
    assert deferred.shape == (10, 40) and deferred.ndim == 2 and deferred.requires_grad
    assert deferred._plain is None  # nothing above computed the logits
    np.testing.assert_allclose(deferred.data, out.data, rtol=1e-6, atol=1e-6)


def test_the_logits_are_never_held_whole(monkeypatch):
    rng = np.random.default_rng(8)
    n, d, v = 256, 16, 4000  # the logits: 4 MB of float32
    monkeypatch.setattr(head_mod, "HEAD_ELEMS", 1 << 16)
    h, w, _, y = _case(rng, n, d, v, True)
    th, tw = Tensor(h, requires_grad=True), Tensor(w, requires_grad=True)
    pool = get_engine().pool
    with pool.transient_peak() as peak:
        head_cross_entropy(th, tw, y).backward()
    # the gradients (h's and w's) and one block of logits, never (n, v)
    assert peak[0] < n * d * 4 + 2 * v * d * 4 + (1 << 16) * 4 + (1 << 16)
    assert peak[0] < n * v * 4 // 2


def test_no_rows_give_zero_loss_and_gradients():
    th = Tensor(np.zeros((0, 4), np.float32), requires_grad=True)
    tw = Tensor(np.ones((6, 4), np.float32), requires_grad=True)
    loss = head_cross_entropy(th, tw, np.zeros(0, np.int64))
    loss.backward()
    assert loss.item() == 0.0 and not tw.grad.any() and th.grad.shape == (0, 4)


@pytest.mark.parametrize("block_rows, chunk_rows", [(64, 64), (7, 3), (1, 50)])
def test_an_int8_table_matches_its_dequantized_float_table(monkeypatch, block_rows, chunk_rows):
    """A frozen tied table in int8 (`quantize_rows`): the loss and the hidden rows' gradient
    are those of the float table its codes stand for, over ragged row blocks and chunks."""
    rng = np.random.default_rng(block_rows)
    n, d, v = 37, 12, 50
    monkeypatch.setattr(head_mod, "HEAD_ELEMS", block_rows * v)
    monkeypatch.setattr(head_mod, "HEAD_QBLOCK_ELEMS", chunk_rows * d)
    h, w, _, y = _case(rng, n, d, v, True)
    codes, scales = quantize_rows(w)
    wq = codes.astype(np.float64) * scales[:, None]  # what the codes stand for
    th = Tensor(h, requires_grad=True)
    loss = head_cross_entropy(th, int8_tensor(codes), y, scales=Tensor(scales))
    (loss * 2.5).backward()
    t_loss, t_dh, _, _, probs, logits = _torch_side(h.astype(np.float32), wq.astype(np.float32),
                                                    np.zeros(v, np.float32), y, True, 2.5,
                                                    torch.float32)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), y] = 1
    ulps = 8 * (d + v)
    assert_close_to_operands(loss.item(), t_loss, np.abs(logits).max(1).mean() + np.log(v)
                             + np.abs(logits).mean(), ulps, np.float32)
    assert_close_to_operands(th.grad, t_dh, (probs + onehot) * (2.5 / n) @ np.abs(wq), ulps,
                             np.float32)


def test_an_int8_table_needs_its_scales_and_a_tied_head():
    rng = np.random.default_rng(5)
    h, w, b, y = _case(rng, 5, 4, 6, True)
    codes, scales = quantize_rows(w)
    th = Tensor(h, requires_grad=True)
    with pytest.raises(ValueError, match="one scale per row"):
        head_cross_entropy(th, int8_tensor(codes), y, scales=Tensor(scales[:3])).item()
    with pytest.raises(ValueError, match="tied head without bias"):
        head_cross_entropy(th, int8_tensor(codes), y, bias=Tensor(b), scales=Tensor(scales))
