"""Transformer and MobileNet layers end to end: a decoder block, a tied head and a depthwise-
separable stack give PyTorch's outputs and parameter gradients; the tiny GPT and MobileNet train
eagerly and hybridized alike."""

import numpy as np
import pytest

from fedcore.engine import Tensor, softmax_cross_entropy
from fedcore.engine.hybrid import compile_step
from fedcore.models import build_model
from fedcore.nn import (
    DecoderBlock,
    DepthwiseConv2d,
    Embedding,
    GlobalAvgPool2d,
    PointwiseConv2d,
    TiedHead,
)
from fedcore.optim import SGD

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _rope(x):  # (B, T, H, D), rotate-half convention
    t, d = x.shape[1], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos, sin = ang.cos()[:, None, :].float(), ang.sin()[:, None, :].float()
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def torch_block(p, x, heads, kv):
    b, t, d = x.shape
    hd = d // heads

    def rms(a, w):
        return F.rms_norm(a, (d,), w, eps=1e-6)

    h = rms(x, p["norm1.weight"])
    q = (h @ p["attn.q.weight"]).view(b, t, heads, hd)
    k = (h @ p["attn.k.weight"]).view(b, t, kv, hd)
    v = (h @ p["attn.v.weight"]).view(b, t, kv, hd)
    q, k = _rope(q), _rope(k)
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))
    k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x = x + a @ p["attn.o.weight"]
    h = rms(x, p["norm2.weight"])
    m = F.silu(h @ p["mlp.gate.weight"]) * (h @ p["mlp.up.weight"])
    return x + m @ p["mlp.down.weight"]


def test_decoder_block_matches_torch():
    block = DecoderBlock(16, 4, 2, 24, seed=3)
    block.flatten_parameters()
    rng = np.random.default_rng(0)
    for _, prm in block.named_parameters():  # non-trivial norm gains
        prm.data[...] += rng.normal(0, 0.1, prm.shape).astype(np.float32)
    x = rng.standard_normal((2, 9, 16)).astype(np.float32)
    r = rng.standard_normal((2, 9, 16)).astype(np.float32)
    xt = Tensor(x, requires_grad=True)
    out = block(xt)
    (out * r).sum().backward()
    tp = {n: torch.tensor(prm.data.copy(), requires_grad=True)
          for n, prm in block.named_parameters()}
    tx = torch.tensor(x, requires_grad=True)
    tout = torch_block(tp, tx, 4, 2)
    (tout * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for n, prm in block.named_parameters():
        g = tp[n].grad.numpy()
        np.testing.assert_allclose(prm.grad, g, rtol=1e-4, atol=1e-5 * np.abs(g).max(),
                                   err_msg=n)


def test_tied_head_gathers_both_gradients():
    emb = Embedding(11, 6, seed=1)
    head = TiedHead(emb)
    ids = np.array([[1, 4, 4, 9]])
    y = np.array([4, 4, 9, 0])
    loss = softmax_cross_entropy(head(emb(ids).reshape(4, 6)), y)
    loss.backward()
    w = torch.tensor(emb.weight.data.copy(), requires_grad=True)
    tl = F.cross_entropy(w[torch.tensor(ids[0])] @ w.T, torch.tensor(y))
    tl.backward()
    assert head.weight is emb.weight
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-5)
    np.testing.assert_allclose(emb.weight.grad, w.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_depthwise_separable_stack_matches_torch():
    dw = DepthwiseConv2d(4, 3, stride=2, padding=1, seed=0)
    pw = PointwiseConv2d(4, 6, seed=1)
    gap = GlobalAvgPool2d()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
    out = gap(pw(dw(x)))
    assert out.shape == (2, 6)
    out.sum().backward()
    tw = torch.tensor(dw.weight.data.copy(), requires_grad=True)
    tpw = torch.tensor(pw.weight.data.copy(), requires_grad=True)
    tx = torch.tensor(x).permute(0, 3, 1, 2)
    h = F.conv2d(tx, tw.permute(2, 0, 1)[:, None], stride=2, padding=1, groups=4)
    tout = (h.permute(0, 2, 3, 1) @ tpw + 0).mean(dim=(1, 2))
    tout.sum().backward()
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw.weight.grad, tw.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pw.weight.grad, tpw.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, kwargs, x, y", [
    ("tiny_gpt", dict(vocab_size=30, embed_dim=16, hidden=24, n_layers=2, n_heads=4,
                      n_kv_heads=2),
     np.random.default_rng(0).integers(0, 30, (3, 8)),
     np.random.default_rng(1).integers(0, 30, 24)),
    ("mobilenet", dict(num_classes=5, input_shape=(12, 12, 1), channels=(4, 8)),
     np.random.default_rng(0).standard_normal((6, 144)).astype(np.float32),
     np.random.default_rng(1).integers(0, 5, 6)),
])
def test_models_train_the_same_eager_and_hybridized(name, kwargs, x, y):
    eager = build_model(name, **kwargs)
    opt = SGD(eager.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = softmax_cross_entropy(eager(Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    hyb = build_model(name, **kwargs)
    step = compile_step(hyb, softmax_cross_entropy, SGD(hyb.parameters(), lr=0.1, momentum=0.9),
                        None)
    hlosses = [step(x, y) for _ in range(3)]
    np.testing.assert_allclose(hlosses, losses, rtol=1e-5)
    np.testing.assert_allclose(hyb.get_flat(), eager.get_flat(), rtol=1e-4, atol=1e-6)
    assert losses[-1] < losses[0]
