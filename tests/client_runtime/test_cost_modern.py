"""FLOPs of the transformer, LoRA and MobileNet layers."""

from client_runtime.cost import forward_flops
from fedcore.models import build_model

GPT = dict(vocab_size=100, embed_dim=32, hidden=48, n_layers=2, n_heads=4, n_kv_heads=2)


def test_tiny_gpt_costs_two_flops_per_weight_per_token_plus_attention():
    model = build_model("tiny_gpt", **GPT)
    t = 16
    # every weight is used once per token by a product (the tied table twice: lookup, head)
    per_token = 2 * model.num_parameters()
    flops = forward_flops(model, (t,))
    attention = 2 * (2.0 * t * t * 32)  # two blocks: scores and weighted values, causal half
    assert 0.95 * (per_token * t + attention) < flops < 1.05 * (per_token * t + attention)


def test_lora_adds_its_low_rank_products_only():
    full = forward_flops(build_model("tiny_gpt", **GPT), (16,))
    lora = forward_flops(build_model("tiny_gpt", lora=dict(rank=4), **GPT), (16,))
    adapters = build_model("tiny_gpt", lora=dict(rank=4), **GPT).layout.size
    assert lora - full == 2 * adapters * 16


def test_mobilenet_counts_depthwise_and_pointwise_layers():
    model = build_model("mobilenet", num_classes=10, input_shape=(28, 28, 1))
    flops = forward_flops(model, (784,))
    stem = 2 * 14 * 14 * 9 * 16
    assert flops > stem + 2 * 14 * 14 * 9 * 16 + 2 * 14 * 14 * 16 * 16  # stem + first block
