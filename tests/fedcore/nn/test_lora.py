"""LoRA: the int8 block-dequantizing product, adapters against PyTorch, freezing, merging."""

import tracemalloc

import numpy as np
import pytest

from fedcore.engine import Tensor, no_grad, softmax_cross_entropy
from fedcore.engine import quant as quant_mod
from fedcore.engine.quant import (
    dequantize_int8,
    int8_tensor,
    qembedding,
    qmatmul,
    quantize_int8,
    quantize_rows,
)
from fedcore.models import build_model
from fedcore.models.gpt import tiny_gpt
from fedcore.nn import Dense
from fedcore.nn.lora import Frozen, LoRADense, apply_lora, lora_config, merge_lora
from fedcore.optim import SGD

torch = pytest.importorskip("torch")
rng = np.random.default_rng(0)

GPT = dict(vocab_size=40, embed_dim=16, hidden=24, n_layers=2, n_heads=4, n_kv_heads=2)


def test_quantize_round_trip_is_within_half_a_step():
    w = rng.standard_normal((20, 7)).astype(np.float32)
    w[:, 3] = 0  # an all-zero column keeps a usable scale
    codes, scales = quantize_int8(w)
    assert codes.dtype == np.int8 and scales.shape == (7,)
    err = np.abs(dequantize_int8(codes, scales) - w)
    assert np.all(err <= scales / 2 + 1e-7)


@pytest.mark.parametrize("block", [1 << 14, 24, 5])  # whole, several blocks, ragged blocks
def test_qmatmul_matches_the_dequantized_product(monkeypatch, block):
    monkeypatch.setattr(quant_mod, "QBLOCK_ELEMS", block)
    w = rng.standard_normal((12, 9)).astype(np.float32)
    codes, scales = quantize_int8(w)
    x = Tensor(rng.standard_normal((5, 12)).astype(np.float32), requires_grad=True)
    out = qmatmul(x, int8_tensor(codes), scales)
    g = rng.standard_normal((5, 9)).astype(np.float32)
    (out * g).sum().backward()
    wf = dequantize_int8(codes, scales)
    np.testing.assert_allclose(out.data, x.data @ wf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad, g @ wf.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", ["float32", "int8"])
def test_lora_dense_gradients_match_torch(base):
    dense = Dense(10, 6, seed=1)
    dense.flatten_parameters()
    dense.bias.data[...] = rng.standard_normal(6)
    layer = LoRADense(dense, rank=3, alpha=6.0, base=base, rng=np.random.default_rng(2))
    layer.flatten_parameters()
    layer.lora_b.data[...] = rng.standard_normal((3, 6))  # B = 0 would hide A's gradient
    x = rng.standard_normal((2, 4, 10)).astype(np.float32)
    xt = Tensor(x, requires_grad=True)
    out = layer(xt)
    out.sum().backward()
    w = layer.weight.data if base == "float32" else dequantize_int8(layer.codes.data,
                                                                   layer.scales.data)
    ta = torch.tensor(layer.lora_a.data.copy(), requires_grad=True)
    tb = torch.tensor(layer.lora_b.data.copy(), requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    tout = tx @ torch.tensor(w) + torch.tensor(layer.bias.data) + (tx @ ta) @ tb * 2.0
    tout.sum().backward()
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.lora_a.grad, ta.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.lora_b.grad, tb.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert [n for n, _ in layer.named_parameters()] == ["lora_a", "lora_b"]


def test_apply_lora_trains_only_adapters_and_starts_as_the_base():
    base = build_model("tiny_gpt", **GPT)
    ids = rng.integers(0, 40, (2, 6))
    with no_grad():
        before = base(ids).data.copy()
    full = base.num_parameters()
    model = apply_lora(base, rank=4, alpha=8, targets=["attn"])
    names = [n for n, _ in model.named_parameters()]
    assert names and all(n.endswith(("lora_a", "lora_b")) and ".attn." in n for n in names)
    assert model.layout.size == 2 * (2 * 4 * (16 + 16) + 2 * 4 * (16 + 8))  # 2 blocks: q, o; k, v
    assert model.layout.size < 0.2 * full
    with no_grad():
        np.testing.assert_array_equal(model(ids).data, before)  # B = 0
    opt = SGD(model.parameters(), lr=0.5)
    y = rng.integers(0, 40, 12)
    start = model.get_flat()
    frozen = model.embed.weight.data.copy()
    for _ in range(3):
        opt.zero_grad()
        softmax_cross_entropy(model(ids), y).backward()
        opt.step()
    assert not np.array_equal(model.get_flat(), start)
    np.testing.assert_array_equal(model.embed.weight.data, frozen)


def test_int8_base_is_close_and_merge_gives_the_same_function():
    model = build_model("tiny_gpt", **GPT)
    ids = rng.integers(0, 40, (2, 6))
    with no_grad():
        ref = model(ids).data.copy()
    model = build_model("tiny_gpt", lora=dict(rank=2, alpha=4, targets=["attn", "mlp"],
                                             base="int8"), **GPT)
    with no_grad():
        q = model(ids).data.copy()
    np.testing.assert_allclose(q, ref, atol=0.05 * np.abs(ref).max())
    model.set_flat(rng.standard_normal(model.layout.size).astype(np.float32) * 0.1)
    with no_grad():
        adapted = model(ids).data.copy()
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRADense) for _, m in merged.named_modules())
    assert merged.layout.size > 10 * 2 * 2 * (16 + 16)
    with no_grad():
        np.testing.assert_allclose(merged(ids).data, adapted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("raw, key", [
    (dict(rank=0), "lora.rank"), (dict(rank=10**6), "lora.rank"), (dict(rank=2.5), "lora.rank"),
    (dict(alpha=-1), "lora.alpha"), (dict(alpha=float("nan")), "lora.alpha"),
    (dict(targets=[]), "lora.targets"), (dict(targets="attn"), "lora.targets"),
    (dict(base="int4"), "lora.base"), (dict(bogus=1), "unknown key"),
    (dict(freeze_a=1), "lora.freeze_a"), (dict(freeze_a="yes"), "lora.freeze_a"),
])
def test_bad_lora_settings_are_refused_before_building(raw, key):
    with pytest.raises(ValueError, match=key):
        lora_config(raw)


def test_a_target_that_names_nothing_is_refused():
    with pytest.raises(ValueError, match="'ffn' names no Dense"):
        build_model("tiny_gpt", lora=dict(targets=["ffn"]), **GPT)


def test_a_message_may_carry_a_lora_table_of_plain_values_only():
    from fedcore.protocol import model_spec

    ok = {"name": "tiny_gpt", "kwargs": {"lora": {"rank": 8, "targets": ["attn"]}}}
    assert model_spec(ok).kwargs["lora"]["rank"] == 8
    for bad in ({"lora": {"rank": {"deep": 1}}}, {"other": {"rank": 8}},
                {"lora": {str(i): i for i in range(20)}}):
        with pytest.raises(ValueError, match="model arguments"):
            model_spec({"name": "tiny_gpt", "kwargs": bad})


def test_freeze_a_trains_and_sends_b_only_and_averaging_is_exact():
    lora = dict(rank=4, alpha=8, targets=["attn", "mlp"], base="int8", freeze_a=True)
    models = [build_model("tiny_gpt", seed=3, lora=lora, **GPT) for _ in range(3)]
    full = build_model("tiny_gpt", seed=3, lora={**lora, "freeze_a": False}, **GPT)
    layers = [m for _, m in models[0].named_modules() if isinstance(m, LoRADense)]
    assert models[0].layout.size == sum(m.lora_b.size for m in layers)
    assert models[0].layout.size < full.layout.size
    assert all(not m.lora_a.requires_grad for m in layers)
    ids = rng.integers(0, GPT["vocab_size"], (2, 6))
    for k, m in enumerate(models[1:]):  # two clients train; A stays the seeded one
        opt = SGD(m.parameters(), lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            softmax_cross_entropy(m(ids), rng.integers(0, GPT["vocab_size"], 12)).backward()
            opt.step()
        assert np.abs(m.get_flat()).max() > 0, k
    merged = [[ly.merged_weight() for _, ly in m.named_modules() if isinstance(ly, LoRADense)]
              for m in models[1:]]
    models[0].set_flat((models[1].get_flat() + models[2].get_flat()) / 2)  # FedAvg of B
    for ly, w1, w2 in zip(layers, *merged, strict=True):  # = FedAvg of the updates A B
        np.testing.assert_allclose(ly.merged_weight(), (w1 + w2) / 2, rtol=1e-5, atol=1e-6)
    first = [m for _, m in models[1].named_modules() if isinstance(m, LoRADense)][0]
    x = Tensor(rng.standard_normal((3, GPT["embed_dim"])).astype(np.float32),
               requires_grad=True)
    out = first(x)  # the layer's op keeps A for x's gradient, and no x: A needs no gradient
    ops = [n for n in _nodes(out) if n.prim.name == "lora_qmatmul"]
    assert len(ops) == 1 and ops[0].in_vars[0] is None and ops[0].in_vars[3] is not None
    trained = [m for _, m in full.named_modules() if isinstance(m, LoRADense)][0]
    ops = [n for n in _nodes(trained(x)) if n.prim.name == "lora_qmatmul"]
    assert len(ops) == 1 and ops[0].in_vars[0] is not None  # A's gradient reads x

def _nodes(t):
    from fedcore.engine.backprop import _toposort
    from fedcore.engine.tensor import Leaf

    return [n for n in _toposort(t._node) if type(n) is not Leaf]


def test_an_int8_lora_build_never_holds_a_flat_float_copy_of_the_base():
    """The builder leaves flattening to build_model, which flattens after the adapters are on:
    the engine never allocates the float32 base's flat vector or its gradients."""
    from fedcore.engine import get_engine

    big = dict(GPT, embed_dim=64, hidden=96, vocab_size=40)
    floats = build_model("tiny_gpt", **big).layout.size * 4
    pool = get_engine().pool
    with pool.transient_peak() as peak:
        model = build_model("tiny_gpt", lora=dict(rank=2, base="int8"), **big)
    assert peak[0] < 0.6 * floats  # int8 codes, the frozen embedding, the adapters
    assert model.grad_flat().size == model.layout.size < 0.2 * floats / 4


@pytest.mark.parametrize("base", ["float32", "int8"])
@pytest.mark.parametrize("elems", [1 << 16, 7])  # one block, ragged row blocks
def test_the_fused_lora_product_and_its_gradients(monkeypatch, base, elems):
    from fedcore.engine import lora as lora_ops

    monkeypatch.setattr(lora_ops, "LOWRANK_ELEMS", elems)
    monkeypatch.setattr(quant_mod, "QBLOCK_ELEMS", 20)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    codes, scales = quantize_int8(w)
    wf = w if base == "float32" else dequantize_int8(codes, scales)
    x, a, b = (Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
               for s in ((7, 6), (6, 2), (2, 5)))
    if base == "float32":
        out = lora_ops.lora_matmul(x, Tensor(w), a, b, 1.5)
    else:
        out = lora_ops.lora_matmul(x, int8_tensor(codes), a, b, 1.5, scales)
    g = rng.standard_normal((7, 5)).astype(np.float32)
    (out * g).sum().backward()
    xd, ad, bd = x.data, a.data, b.data
    tol = dict(rtol=1e-5, atol=1e-5 * float(np.abs(g).max() * np.abs(xd).max() * 10))
    np.testing.assert_allclose(out.data, xd @ wf + 1.5 * (xd @ ad) @ bd, **tol)
    np.testing.assert_allclose(x.grad, g @ wf.T + 1.5 * (g @ bd.T) @ ad.T, **tol)
    np.testing.assert_allclose(a.grad, 1.5 * xd.T @ (g @ bd.T), **tol)
    np.testing.assert_allclose(b.grad, 1.5 * (xd @ ad).T @ g, **tol)


def _traced(build):  # noqa: ANN001, ANN202
    """(what `build()` returns, the bytes numpy and Python held at the peak while it ran
    beyond what they hold once it is done, i.e. what building needed only for a while)."""
    tracemalloc.start()
    try:
        out = build()
        now, peak = tracemalloc.get_traced_memory()
        return out, peak - now
    finally:
        tracemalloc.stop()


def test_an_int8_lora_model_is_built_block_by_block():
    """build_model hands the builder the adapters: each block is quantized as it is built, so
    building holds one block's float32 weights for a while, not all blocks' (as it did when
    the finished float32 model was adapted: `whole`), and the model is the same as that one."""
    cfg = dict(vocab_size=64, embed_dim=64, hidden=172, n_layers=16, n_heads=4, n_kv_heads=2)
    lora = dict(rank=4, alpha=8, targets=["attn", "mlp"], base="int8")
    build_model("tiny_gpt", lora=lora, **cfg)  # imports done before anything is traced
    dense = sum(p.data.nbytes for n, p in build_model("tiny_gpt", **cfg).named_parameters()
                if n.startswith("blocks.") and p.data.ndim == 2)
    model, extra = _traced(lambda: build_model("tiny_gpt", lora=lora, **cfg))
    whole, whole_extra = _traced(lambda: apply_lora(tiny_gpt(**cfg), **lora))
    assert whole_extra > dense / 2  # the measure sees the float32 model when it is whole
    assert extra < 3 * dense / cfg["n_layers"]  # a block's float32 and one float64 temporary
    np.testing.assert_array_equal(model.get_flat(), whole.flatten_parameters() and
                                  whole.get_flat())
    for (name, a), (_, b) in zip(model.named_modules(), whole.named_modules(), strict=True):
        if isinstance(a, LoRADense):
            np.testing.assert_array_equal(a.codes.data, b.codes.data, err_msg=name)
            np.testing.assert_array_equal(a.scales.data, b.scales.data, err_msg=name)


def test_quantize_rows_and_qembedding_dequantize_the_rows_looked_up():
    table = rng.standard_normal((9, 5)).astype(np.float32)
    table[4] = 0  # an all-zero row keeps a usable scale
    codes, scales = quantize_rows(table)
    assert codes.shape == (9, 5) and codes.dtype == np.int8 and codes.flags.c_contiguous
    wq = dequantize_int8(codes.T, scales).T  # the table the codes stand for
    assert np.all(np.abs(wq - table) <= scales[:, None] / 2 + 1e-7)
    ids = np.array([[0, 4, 8], [8, 8, 1]])
    out = qembedding(ids, int8_tensor(codes), scales)
    np.testing.assert_array_equal(out.data, wq[ids])
    with pytest.raises(IndexError, match=r"\[0, 9\)"):
        np.asarray(qembedding(np.array([9]), int8_tensor(codes), scales).data)
    with pytest.raises(TypeError, match="integers"):
        np.asarray(qembedding(np.array([0.5]), int8_tensor(codes), scales).data)


@pytest.mark.parametrize("checkpoint", ["none", "blocks"])
def test_an_int8_base_holds_the_tied_table_in_int8_too(checkpoint):
    """The frozen embedding, shared with the tied head, becomes int8 codes and per-row scales:
    the model computes what the float model with the dequantized table computes (forward,
    evaluation and the adapters' gradients), and merging gives that float table back, shared."""
    model = build_model("tiny_gpt", lora=dict(rank=2, alpha=4, targets=["attn", "mlp"],
                                             base="int8"), checkpoint=checkpoint, **GPT)
    embed, head = model.embed, model.head
    assert embed.weight.data.dtype == np.int8 and head.weight is embed.weight
    assert head.scales is embed.scales and embed.scales.shape == (40,)
    model.set_flat(rng.standard_normal(model.layout.size).astype(np.float32) * 0.1)
    ids, y = rng.integers(0, 40, (3, 6)), rng.integers(0, 40, 18)
    loss = softmax_cross_entropy(model(ids), y)
    loss.backward()
    grads = model.grad_flat().copy()
    with no_grad():
        evaluated = model(ids).data.copy()
    flat = model.get_flat().copy()
    table = embed.weight.data.astype(np.float32) * embed.scales.data[:, None]
    merged = merge_lora(model)
    assert merged.embed.weight.data.dtype == np.float32
    assert merged.head.weight is merged.embed.weight and merged.embed.scales is None
    np.testing.assert_array_equal(merged.embed.weight.data, table)
    float_model = build_model("tiny_gpt", lora=dict(rank=2, alpha=4, targets=["attn", "mlp"],
                                                   base="int8"), checkpoint=checkpoint, **GPT)
    float_model.embed.weight = float_model.head.weight = Frozen(table)  # the table, in float
    float_model.embed.scales = float_model.head.scales = None
    float_model.set_flat(flat)
    ref_loss = softmax_cross_entropy(float_model(ids), y)
    ref_loss.backward()
    with no_grad():
        ref = float_model(ids).data
        np.testing.assert_allclose(merged(ids).data, ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(evaluated, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(grads, float_model.grad_flat(), rtol=1e-3,
                               atol=1e-4 * np.abs(grads).max())


def test_a_float32_base_keeps_a_float_table():
    model = build_model("tiny_gpt", lora=dict(rank=2, targets=["attn"]), **GPT)
    assert model.embed.weight.data.dtype == np.float32 and model.embed.scales is None
    assert model.head.weight is model.embed.weight
