"""What local training costs in float32 operations, counted analytically from layer shapes.

The engine has no FLOP counter, so ``forward_flops`` walks a model's leaf layers in order and
counts multiply-adds as 2 FLOPs (dense, convolution, recurrent gates) plus one FLOP per
element for activations, pooling windows and normalisation. A training step costs about
three forward passes (forward, then the gradients w.r.t. inputs and weights):
``training_flops = 3 * forward_flops * examples * epochs``. Layers the walk does not know
count one FLOP per element and keep the shape; a layer that counts itself (a
``forward_flops(shape) -> (flops, output shape)`` method, e.g. an imported ONNX graph) and a
model that names its ``family`` are asked instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedcore.nn import Module

TRAIN_FACTOR = 3.0  # forward + backward (inputs) + backward (weights)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


def _window(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _layer(module: Module, shape: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
    """FLOPs of one leaf layer for one example of ``shape``, and its output shape."""
    kind = type(module).__name__
    size = math.prod(shape)
    own = getattr(module, "forward_flops", None)
    if callable(own):
        return own(shape)
    if kind == "Dense":
        rows = size // shape[-1]
        out = (*shape[:-1], module.out_features)
        return 2.0 * rows * module.in_features * module.out_features, out
    if kind == "Conv2d":
        h, w, _ = shape
        kh, kw = module.kernel_size
        (sh, sw), (ph, pw) = _pair(module.stride), _pair(module.padding)
        ho, wo = _window(h, kh, sh, ph), _window(w, kw, sw, pw)
        flops = 2.0 * ho * wo * kh * kw * module.in_channels * module.out_channels
        return flops, (ho, wo, module.out_channels)
    if kind in ("MaxPool2d", "AvgPool2d"):
        h, w, c = shape
        (kh, kw), (sh, sw) = _pair(module.kernel_size), _pair(module.stride)
        ph, pw = _pair(module.padding)
        ho, wo = _window(h, kh, sh, ph), _window(w, kw, sw, pw)
        return float(ho * wo * c * kh * kw), (ho, wo, c)
    if kind == "Flatten":
        return 0.0, (size,)
    if kind == "Reshape":
        return 0.0, tuple(module.shape)
    if kind == "Embedding":
        return 0.0, (*shape, module.dim)
    if kind in ("LSTM", "GRU"):
        gates = 4 if kind == "LSTM" else 3
        steps = size // shape[-1]
        hidden = module.hidden_size
        matmul = 2.0 * steps * gates * hidden * (module.input_size + hidden)
        return matmul + 10.0 * steps * hidden, (*shape[:-1], hidden)
    if kind in ("BatchNorm", "LayerNorm", "RMSNorm"):
        return (6.0 if getattr(module, "relu", False) else 5.0) * size, shape  # a fused ReLU
    return float(size), shape  # activations, dropout: one op per element


def _attention_scores(module: Module, shape: tuple[int, ...]) -> float:
    """The score and weighted-sum products of an attention layer, which its projections (the
    leaves) do not count: 2 x T x T x d_model each, halved under a causal mask."""
    if "Attention" not in type(module).__name__ or len(shape) < 2:
        return 0.0
    steps, width = math.prod(shape[:-1]), shape[-1]
    causal = 0.5 if getattr(module, "causal", False) else 1.0
    return causal * 2 * (2.0 * steps * steps * width)


def forward_flops(model: Module, input_shape: Sequence[int]) -> float:
    """FLOPs of one forward pass of one example of ``input_shape`` (no batch axis)."""
    shape = tuple(int(n) for n in input_shape)
    total = 0.0
    inside: str | None = None  # a layer that counted itself whole: skip its sub-layers
    for name, module in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        inside = None
        counts_itself = callable(getattr(module, "forward_flops", None))
        if module._modules and not counts_itself:  # containers: leaves are visited in order
            total += _attention_scores(module, shape)
            continue
        if counts_itself:
            inside = name + "."
        flops, shape = _layer(module, shape)
        total += flops
    return total


def model_family(model: Module) -> str:
    """The family whose measured engine efficiency times this model (see
    ``device_profiles.efficiency``): attention makes a transformer, a recurrent layer an rnn,
    a convolution a cnn; anything else is an mlp."""
    own = getattr(model, "family", None)
    if isinstance(own, str):
        return own
    kinds = {type(module).__name__ for _, module in model.named_modules()}
    if any("Attention" in kind for kind in kinds):
        return "transformer"
    if kinds & {"LSTM", "GRU"}:
        return "rnn"
    if any("Conv" in kind for kind in kinds):
        return "cnn"
    return "mlp"


def training_flops(
    model: Module, input_shape: Sequence[int], examples: int, epochs: int = 1
) -> float:
    """FLOPs of ``epochs`` of training over ``examples`` examples (see module docstring)."""
    return TRAIN_FACTOR * forward_flops(model, input_shape) * examples * epochs
