"""ONNX converters for the engine's layers and the reference models (evaluation semantics).

Layouts: the engine is channels-last (NHWC) and ONNX's Conv/MaxPool/AveragePool are NCHW, so
the graph transposes activations into NCHW before the first conv/pool of a run and back before
the first layer that cares (Flatten, Dense, ...); conv weights (KH, KW, C_in, C_out) are stored
as (C_out, C_in, KH, KW). Flatten therefore sees NHWC and matches the engine's feature order.

Recurrent layers use ONNX's LSTM/GRU ops on time-major input (transposed from batch-first).
Gate blocks are reordered: the engine's LSTM is (i, f, o, g), ONNX's is (i, o, f, c); the
engine's GRU is PyTorch's (r, z, n) with the reset gate applied after the recurrent matmul,
ONNX's is (z, r, h) with `linear_before_reset=1`.
"""

from __future__ import annotations

import math

import numpy as np

from ..engine.conv import _pair, conv_output_size
from ..models.lstm import LanguageModel
from ..nn import (
    GELU,
    GRU,
    LSTM,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    MaxPool2d,
    ReLU,
    Reshape,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from ..nn.module import Module
from .graph import (
    Converter,
    Dim,
    Graph,
    Value,
    child_path,
    fmt_shape,
    param,
    register_converter,
)

__all__: list[str] = []  # converters register themselves on import

_GELU_A = 0.044715
_GELU_C = math.sqrt(2.0 / math.pi)


def _check_features(x: Value, axis: int, size: int, layer: str) -> None:
    """ValueError unless axis `axis` of `x` is `size` (or not known statically)."""
    dim = x.shape[axis]
    if isinstance(dim, int) and dim != size:
        raise ValueError(f"export_onnx: {layer} expects {size} features on axis {axis}, got "
                         f"input shape {fmt_shape(x.shape)}")


def _check_float(x: Value, layer: str, min_rank: int = 1) -> None:
    if x.integer:
        raise ValueError(f"export_onnx: {layer} needs a float input, got integer ids "
                         f"(start the model with an Embedding?)")
    if x.rank < min_rank:
        raise ValueError(f"export_onnx: {layer} needs at least {min_rank} axes, got input "
                         f"shape {fmt_shape(x.shape)}")


def _ints(g: Graph, base: str, values: list[int]) -> str:
    return g.const(base, np.array(values, np.int64))


# -- containers and models ----------------------------------------------------------------------
@register_converter(Sequential)
def _sequential(g: Graph, m: Sequential, x: Value, path: str) -> Value:
    for name, child in m._modules.items():
        x = g.convert(child, x, child_path(path, name))
    return x


@register_converter(LanguageModel)
def _language_model(g: Graph, m: LanguageModel, x: Value, path: str) -> Value:
    hs = g.convert(m.rnn, g.convert(m.embed, x, child_path(path, "embed")),
                   child_path(path, "rnn"))
    rows = Value(g.node("Reshape", [hs.name, _ints(g, "shape", [-1, m.hidden])]),
                 (None, m.hidden))
    return g.convert(m.head, rows, child_path(path, "head"))


# -- dense and shape ----------------------------------------------------------------------------
@register_converter(Dense)
def _dense(g: Graph, m: Dense, x: Value, path: str) -> Value:
    """Gemm(x, weight[, bias]): the engine's (in, out) weight needs no transpose."""
    x = g.to_nhwc(x)
    _check_float(x, "Dense")
    if x.rank != 2:  # the engine's matmul/linear are 2-D only
        raise ValueError(f"export_onnx: Dense expects a (batch, {m.in_features}) input, got "
                         f"shape {fmt_shape(x.shape)} (add a Flatten or Reshape)")
    _check_features(x, -1, m.in_features, "Dense")
    inputs = [x.name, g.const(f"{path}.weight", param(m, "weight"))]
    if m.bias is not None:
        inputs.append(g.const(f"{path}.bias", param(m, "bias")))
    return Value(g.node("Gemm", inputs), (x.shape[0], m.out_features))


@register_converter(Flatten)
def _flatten(g: Graph, m: Flatten, x: Value, path: str) -> Value:
    x = g.to_nhwc(x)
    _check_float(x, "Flatten", 2)
    rest = x.shape[1:]
    size = math.prod(rest) if all(isinstance(d, int) for d in rest) else None
    return Value(g.node("Flatten", [x.name], axis=1), (x.shape[0], size))


@register_converter(Reshape)
def _reshape(g: Graph, m: Reshape, x: Value, path: str) -> Value:
    x = g.to_nhwc(x)
    want = math.prod(m.shape)
    rest = x.shape[1:]
    first: Dim = None
    if all(isinstance(d, int) for d in rest):
        have = math.prod(rest)  # type: ignore[arg-type]
        if have % want:
            raise ValueError(f"export_onnx: Reshape{m.shape} cannot reshape input of shape "
                             f"{fmt_shape(x.shape)}")
        first = x.shape[0] if have == want else None
    out = g.node("Reshape", [x.name, _ints(g, "shape", [-1, *m.shape])])
    return Value(out, (first, *m.shape), integer=x.integer)


# -- elementwise ----------------------------------------------------------------------------------
def _unary(op: str, layer: str) -> Converter:
    """A converter for an elementwise op (kept in whichever layout its input is in)."""

    def convert(g: Graph, m: Module, x: Value, path: str) -> Value:
        _check_float(x, layer)
        return Value(g.node(op, [x.name]), x.shape, x.nchw)
    return convert


register_converter(ReLU)(_unary("Relu", "ReLU"))
register_converter(Tanh)(_unary("Tanh", "Tanh"))
register_converter(Sigmoid)(_unary("Sigmoid", "Sigmoid"))


@register_converter(GELU)
def _gelu(g: Graph, m: GELU, x: Value, path: str) -> Value:
    """0.5 x (1 + tanh(c x (1 + a x^2))), in the engine's order of operations."""
    _check_float(x, "GELU")
    t = g.node("Mul", [x.name, x.name])
    t = g.node("Mul", [t, g.scalar(_GELU_A)])
    t = g.node("Add", [t, g.scalar(1.0)])
    t = g.node("Mul", [t, x.name])
    t = g.node("Mul", [t, g.scalar(_GELU_C)])
    t = g.node("Tanh", [t])
    t = g.node("Add", [t, g.scalar(1.0)])
    t = g.node("Mul", [t, x.name])
    return Value(g.node("Mul", [t, g.scalar(0.5)]), x.shape, x.nchw)


@register_converter(Dropout)
def _dropout(g: Graph, m: Dropout, x: Value, path: str) -> Value:
    return x  # the identity in evaluation mode


@register_converter(Softmax)
def _softmax(g: Graph, m: Softmax, x: Value, path: str) -> Value:
    x = g.to_nhwc(x)
    _check_float(x, "Softmax")
    if not -x.rank <= m.axis < x.rank:
        raise ValueError(f"export_onnx: Softmax axis {m.axis} is out of range for input "
                         f"shape {fmt_shape(x.shape)}")
    return Value(g.node("Softmax", [x.name], axis=m.axis), x.shape)


# -- convolution and pooling ----------------------------------------------------------------------
def _spatial(x: Value, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], layer: str) -> tuple[Dim, Dim]:
    out: list[Dim] = []
    for size, k, s, p in zip(x.shape[1:3], kernel, stride, padding, strict=True):
        if not isinstance(size, int):
            out.append(None)
            continue
        n = conv_output_size(size, k, s, p)
        if n < 1:
            raise ValueError(f"export_onnx: {layer} input {fmt_shape(x.shape)} is smaller than "
                             f"its {kernel} window (padding {padding})")
        out.append(n)
    return out[0], out[1]


@register_converter(Conv2d)
def _conv2d(g: Graph, m: Conv2d, x: Value, path: str) -> Value:
    _check_float(x, "Conv2d")
    x = g.to_nchw(x, "Conv2d")
    _check_features(x, 3, m.in_channels, "Conv2d")
    (ph, pw), stride = m.padding, m.stride
    w = g.const(f"{path}.weight", param(m, "weight").transpose(3, 2, 0, 1))  # OIHW
    inputs = [x.name, w]
    if m.bias is not None:
        inputs.append(g.const(f"{path}.bias", param(m, "bias")))
    out = g.node("Conv", inputs, kernel_shape=list(m.kernel_size), strides=list(stride),
                 pads=[ph, pw, ph, pw])
    ho, wo = _spatial(x, m.kernel_size, stride, m.padding, "Conv2d")
    return Value(out, (x.shape[0], ho, wo, m.out_channels), nchw=True)


def _pool(g: Graph, m: MaxPool2d | AvgPool2d, x: Value, op: str, **attrs: int) -> Value:
    layer = type(m).__name__
    _check_float(x, layer)
    x = g.to_nchw(x, layer)
    kernel = _pair(layer, "kernel_size", m.kernel_size)
    stride = _pair(layer, "stride", m.stride)
    (ph, pw) = padding = _pair(layer, "padding", m.padding)
    out = g.node(op, [x.name], kernel_shape=list(kernel), strides=list(stride),
                 pads=[ph, pw, ph, pw], **attrs)
    ho, wo = _spatial(x, kernel, stride, padding, layer)
    return Value(out, (x.shape[0], ho, wo, x.shape[3]), nchw=True)


@register_converter(MaxPool2d)
def _max_pool(g: Graph, m: MaxPool2d, x: Value, path: str) -> Value:
    return _pool(g, m, x, "MaxPool")  # ONNX pads ignore padding: the engine's -inf border


@register_converter(AvgPool2d)
def _avg_pool(g: Graph, m: AvgPool2d, x: Value, path: str) -> Value:
    return _pool(g, m, x, "AveragePool", count_include_pad=1)  # zeros count, as in the engine


# -- normalisation --------------------------------------------------------------------------------
@register_converter(BatchNorm)
def _batch_norm(g: Graph, m: BatchNorm, x: Value, path: str) -> Value:
    """(x - mean) * (gamma / sqrt(var + eps)) + beta with the running statistics (then a
    Relu for a BatchNorm with relu=True)."""
    _check_float(x, "BatchNorm", 2)
    _check_features(x, -1, m.num_features, "BatchNorm")
    running = np.asarray(m.running.numpy(), np.float64)
    scale = param(m, "weight") / np.sqrt(running[1] + m.eps)
    shape = (-1, 1, 1) if x.nchw else (-1,)  # per channel, on whichever axis holds them
    out = g.node("Sub", [x.name, g.const(f"{path}.running_mean", running[0].reshape(shape))])
    out = g.node("Mul", [out, g.const(f"{path}.scale", scale.reshape(shape))])
    out = g.node("Add", [out, g.const(f"{path}.bias", param(m, "bias").reshape(shape))])
    if m.relu:
        out = g.node("Relu", [out])
    return Value(out, x.shape, x.nchw)


@register_converter(LayerNorm)
def _layer_norm(g: Graph, m: LayerNorm, x: Value, path: str) -> Value:
    x = g.to_nhwc(x)
    _check_float(x, "LayerNorm")
    _check_features(x, -1, m.num_features, "LayerNorm")
    if g.opset < 17:
        raise ValueError(f"export_onnx: LayerNorm needs opset >= 17, got {g.opset}")
    out = g.node("LayerNormalization", [x.name, g.const(f"{path}.weight", param(m, "weight")),
                                        g.const(f"{path}.bias", param(m, "bias"))],
                 axis=-1, epsilon=m.eps)
    return Value(out, x.shape)


# -- sequences ------------------------------------------------------------------------------------
@register_converter(Embedding)
def _embedding(g: Graph, m: Embedding, x: Value, path: str) -> Value:
    if not x.integer:
        raise ValueError("export_onnx: Embedding needs integer ids as input, got floats")
    out = g.node("Gather", [g.const(f"{path}.weight", param(m, "weight")), x.name], axis=0)
    return Value(out, (*x.shape, m.dim))


def _gate_blocks(w: np.ndarray, order: list[int], hidden: int) -> np.ndarray:
    """Reorder the gate blocks along the last axis of `w` (..., G*H) into `order`."""
    return np.concatenate([w[..., k * hidden:(k + 1) * hidden] for k in order], axis=-1)


def _recurrent(g: Graph, m: LSTM | GRU, x: Value, path: str, op: str, order: list[int],
               biases: list[np.ndarray], **attrs: int) -> Value:
    layer, hid = type(m).__name__, m.hidden_size
    x = g.to_nhwc(x)
    _check_float(x, layer)
    if x.rank != 3:
        raise ValueError(f"export_onnx: {layer} expects a (batch, time, features) input, got "
                         f"shape {fmt_shape(x.shape)}")
    _check_features(x, 2, m.input_size, layer)
    # engine (in, G*H) column blocks -> ONNX (num_directions=1, G*H, in) row blocks
    w = g.const(f"{path}.W", _gate_blocks(param(m, "w_ih"), order, hid).T[None])
    r = g.const(f"{path}.R", _gate_blocks(param(m, "w_hh"), order, hid).T[None])
    b = g.const(f"{path}.B", np.concatenate([_gate_blocks(v, order, hid) for v in biases])[None])
    xt = g.node("Transpose", [x.name], perm=[1, 0, 2])  # time-major (T, B, E)
    y = g.node(op, [xt, w, r, b], hidden_size=hid, **attrs)  # (T, 1, B, H)
    y = g.node("Squeeze", [y, _ints(g, "axes", [1])])
    out = g.node("Transpose", [y], perm=[1, 0, 2])
    return Value(out, (x.shape[0], x.shape[1], hid))


@register_converter(LSTM)
def _lstm(g: Graph, m: LSTM, x: Value, path: str) -> Value:
    """Engine gates (i, f, o, g) -> ONNX (i, o, f, c); the one bias goes in Wb, Rb is zero."""
    bias = param(m, "bias")
    return _recurrent(g, m, x, path, "LSTM", [0, 2, 1, 3], [bias, np.zeros_like(bias)])


@register_converter(GRU)
def _gru(g: Graph, m: GRU, x: Value, path: str) -> Value:
    """Engine gates (r, z, n) -> ONNX (z, r, h), reset applied after the recurrent matmul."""
    return _recurrent(g, m, x, path, "GRU", [1, 0, 2], [param(m, "b_ih"), param(m, "b_hh")],
                      linear_before_reset=1)
