"""Layer ops of imported graphs: convolution, pooling, normalisation, dropout, LSTM and GRU.

4-D data arrives channels-last (the interpreter converts NCHW once, where the first such op
meets it); weights stay in ONNX's layout as parameters and are rearranged per step (a copy
of the weights, small next to the activations), so the file's tensors are the parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import engine as E
from ...engine import Tensor
from . import prims_conv as C
from . import prims_shape as S
from .registry import ANY, Value, const, one_of, register
from .spec import NodeSpec

__all__: list[str] = []

_PADS = one_of("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
_CONV_ATTRS = {"kernel_shape": ANY, "strides": ANY, "pads": ANY, "dilations": ANY,
               "auto_pad": _PADS, "group": ANY}


def _window(node: NodeSpec, hw: tuple[int, int], kernel: list[int], ceil: bool = False
            ) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads as [top, left, bottom, right]) for a 2-D window op."""
    if len(kernel) != 2:
        raise ValueError(f"only 2-D windows are supported, got kernel {kernel}")
    strides = [int(s) for s in node.attrs.get("strides", [1, 1])]
    dil = [int(d) for d in node.attrs.get("dilations", [1, 1])]
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = [0, 0, 0, 0]
        for i in range(2):
            span = (kernel[i] - 1) * dil[i] + 1
            total = max((math.ceil(hw[i] / strides[i]) - 1) * strides[i] + span - hw[i], 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + 2] = lo, total - lo
    if ceil:
        for i in range(2):
            span = (kernel[i] - 1) * dil[i] + 1
            size = hw[i] + pads[i] + pads[i + 2] - span
            out = -(-size // strides[i]) + 1
            if (out - 1) * strides[i] >= hw[i] + pads[i]:
                out -= 1
            pads[i + 2] += max(0, (out - 1) * strides[i] + span - (hw[i] + pads[i] + pads[i + 2]))
    return strides, dil, pads


def _pad_hw(x: Value, pads: list[int], value: float) -> Value:
    t, left, b, r = pads
    return S.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), value)


@register("Conv", layout="nhwc", attrs=_CONV_ATTRS, min_inputs=2)
def _conv(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"only 2-D convolutions are supported, got input rank {x.ndim}")
    cout, cin_g, kh, kw = w.shape
    group = int(node.attrs.get("group", 1))
    strides, dil, pads = _window(node, x.shape[1:3], [kh, kw])
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]
    if not symmetric:
        x = _pad_hw(x, pads, 0.0)
    padding = (pads[0], pads[1]) if symmetric else (0, 0)
    if group == x.shape[3] and cin_g == 1 and cout == group:  # depthwise: the engine's op
        wk = S.transpose(E.reshape(w, (cout, kh, kw)), (1, 2, 0))  # (KH, KW, C)
        if dil != [1, 1]:
            wk = C.dilate_kernel(wk, tuple(dil))
        bias = b if b is not None else np.zeros(cout, np.float32)
        return E.depthwise_conv2d(x, wk, bias, tuple(strides), padding)
    wk = S.transpose(w, (2, 3, 1, 0))  # (KH, KW, C_in/group, C_out)
    if dil != [1, 1]:
        wk = C.dilate_kernel(wk, tuple(dil))
    if group == 1:
        return E.conv2d(x, wk, b, tuple(strides), padding)
    if x.shape[3] != cin_g * group or cout % group:
        raise ValueError(f"input {x.shape} and weight {w.shape} do not fit group={group}")
    step, outs = cout // group, []
    for gi in range(group):
        xi = S.slice_(x, (slice(None),) * 3 + (slice(gi * cin_g, (gi + 1) * cin_g),))
        wi = S.slice_(wk, (slice(None),) * 3 + (slice(gi * step, (gi + 1) * step),))
        bi = None if b is None else S.slice_(b, (slice(gi * step, (gi + 1) * step),))
        outs.append(E.conv2d(xi, wi, bi, tuple(strides), padding))
    return S.concat(outs, 3)


@register("MaxPool", layout="nhwc",
          attrs={"kernel_shape": ANY, "strides": ANY, "pads": ANY, "auto_pad": _PADS,
                 "ceil_mode": one_of(0, 1), "dilations": lambda v: list(v) == [1, 1],
                 "storage_order": one_of(0)})
def _max_pool(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    k = [int(v) for v in node.attrs["kernel_shape"]]
    strides, _, pads = _window(node, x.shape[1:3], k, bool(node.attrs.get("ceil_mode", 0)))
    if pads[0] == pads[2] and pads[1] == pads[3] and 2 * pads[0] <= k[0] and 2 * pads[1] <= k[1]:
        return E.max_pool2d(x, tuple(k), tuple(strides), (pads[0], pads[1]))
    return E.max_pool2d(_pad_hw(x, pads, -np.inf), tuple(k), tuple(strides), 0)


def _count(hw: tuple[int, int], k: list[int], strides: list[int], pads: list[int],
           out_hw: tuple[int, int]) -> np.ndarray:
    """How many real (not padding) inputs each output window covers, as (1, Ho, Wo, 1)."""
    ones = np.pad(np.ones(hw, np.float32), ((pads[0], pads[2]), (pads[1], pads[3])))
    total = np.zeros(out_hw, np.float32)
    for i in range(k[0]):
        for j in range(k[1]):
            total += ones[i:i + strides[0] * (out_hw[0] - 1) + 1:strides[0],
                          j:j + strides[1] * (out_hw[1] - 1) + 1:strides[1]]
    return total[None, :, :, None]


@register("AveragePool", layout="nhwc",
          attrs={"kernel_shape": ANY, "strides": ANY, "pads": ANY, "auto_pad": _PADS,
                 "ceil_mode": one_of(0), "count_include_pad": one_of(0, 1),
                 "dilations": lambda v: list(v) == [1, 1]})
def _avg_pool(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    k = [int(v) for v in node.attrs["kernel_shape"]]
    strides, _, pads = _window(node, x.shape[1:3], k)
    if any(pads):
        x = _pad_hw(x, pads, 0.0)
    y = E.avg_pool2d(x, tuple(k), tuple(strides), 0)
    if any(pads) and not node.attrs.get("count_include_pad", 0):
        hw = (x.shape[1] - pads[0] - pads[2], x.shape[2] - pads[1] - pads[3])
        y = E.mul(y, (k[0] * k[1]) / _count(hw, k, strides, pads, y.shape[1:3]))
    return y


@register("GlobalAveragePool", layout="nhwc")
def _global_avg(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    if x.ndim == 4:  # channels-last: the engine's pooling, kept 4-D
        return E.reshape(E.global_avg_pool2d(x), (x.shape[0], 1, 1, x.shape[3]))
    return E.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@register("BatchNormalization", layout="nhwc",
          attrs={"epsilon": ANY, "momentum": ANY, "training_mode": one_of(0, 1)},
          settings=(3, 4), min_inputs=5)
def _batch_norm(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x, scale, bias = xs[0], xs[1], xs[2]
    running = rt.running_stats(node)
    eps = float(node.attrs.get("epsilon", 1e-5))
    momentum = 1.0 - float(node.attrs.get("momentum", 0.9))
    last = x.ndim == 2 or x.ndim == 4  # (N, C) or NHWC: the features are the last axis
    if not last:
        x = S.transpose(x, (0, *range(2, x.ndim), 1))
    y = E.batch_norm(x, scale, bias, running, training=rt.training, momentum=momentum, eps=eps)
    return y if last else S.transpose(y, (0, x.ndim - 1, *range(1, x.ndim - 1)))


@register("LayerNormalization", attrs={"axis": ANY, "epsilon": ANY, "stash_type": ANY},
          min_inputs=2)
def _layer_norm(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 and xs[2] is not None else np.zeros(scale.shape, np.float32)
    axis = int(node.attrs.get("axis", -1)) % x.ndim
    eps = float(node.attrs.get("epsilon", 1e-5))
    if axis == x.ndim - 1:
        return E.layer_norm(x, scale, bias, eps)
    feat = math.prod(x.shape[axis:])
    y = E.layer_norm(E.reshape(x, (*x.shape[:axis], feat)), E.reshape(scale, (feat,)),
                     E.reshape(bias, (feat,)) if isinstance(bias, Tensor) else
                     np.asarray(bias).reshape(feat), eps)
    return E.reshape(y, tuple(x.shape))


@register("Dropout", layout="elementwise", attrs={"seed": ANY}, settings=(1, 2))
def _dropout(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    ratio = float(const(xs[1], "ratio")) if len(xs) > 1 and xs[1] is not None else 0.5
    if not rt.training or ratio == 0.0 or not isinstance(x, Tensor):
        return x
    return E.dropout(x, ratio, rt.rng(node), training=True)


# -- recurrent layers ------------------------------------------------------------------------
_RNN_ATTRS = {"hidden_size": ANY, "direction": one_of("forward"), "layout": one_of(0, 1),
              "activations": ANY, "clip": None, "activation_alpha": None,
              "activation_beta": None}


def _gates(m: Value, order: list[int], hid: int) -> Tensor:
    """Rows of a (G*H, ...) ONNX gate stack reordered into the engine's gate order."""
    rows = np.concatenate([np.arange(g * hid, (g + 1) * hid) for g in order])
    return S.take(m, rows, 0)


def _rnn_io(node: NodeSpec, xs: list[Value], ngates: int) -> tuple[Value, int, bool]:
    x = xs[0]
    hid = int(node.attrs["hidden_size"])
    w = xs[1]
    if tuple(w.shape) != (1, ngates * hid, x.shape[-1]):
        raise ValueError(f"W {tuple(w.shape)} does not fit hidden_size={hid} and input "
                         f"{tuple(x.shape)} (only one direction is supported)")
    if len(xs) > 4 and xs[4] is not None:
        raise ValueError("sequence_lens is not supported (pad sequences to one length)")
    batch_first = bool(node.attrs.get("layout", 0))
    return (x if batch_first else S.transpose(x, (1, 0, 2))), hid, batch_first


def _state(v: Value, hid: int) -> Value:
    if v is None:
        return None
    return E.reshape(v, (-1, hid)) if isinstance(v, Tensor) else np.asarray(v).reshape(-1, hid)


def _rnn_outputs(hs: Tensor, batch_first: bool, hid: int) -> list[Value]:
    """Y (T, 1, B, H) or (B, T, 1, H), and Y_h (1, B, H) from the last step."""
    b, t = hs.shape[0], hs.shape[1]
    y = E.reshape(hs, (b, t, 1, hid)) if batch_first else E.reshape(
        S.transpose(hs, (1, 0, 2)), (t, 1, b, hid))
    last = S.slice_(hs, (slice(None), slice(t - 1, t)))
    y_h = E.reshape(last, (b, 1, hid)) if batch_first else E.reshape(last, (1, b, hid))
    return [y, y_h]


@register("LSTM", attrs={**_RNN_ATTRS, "input_forget": one_of(0)}, settings=(4,),
          min_inputs=3, outputs=2)
def _lstm(rt: Any, node: NodeSpec, xs: list[Value]) -> list[Value]:
    xs = xs + [None] * (8 - len(xs))
    if xs[7] is not None:
        raise ValueError("peephole weights (input P) are not supported")
    if node.attrs.get("activations", ["Sigmoid", "Tanh", "Tanh"]) != ["Sigmoid", "Tanh", "Tanh"]:
        raise ValueError("only the default activations are supported")
    x, hid, batch_first = _rnn_io(node, xs, 4)
    order = [0, 2, 1, 3]  # ONNX (i, o, f, c) -> engine (i, f, o, g)
    w_ih = S.transpose(_gates(E.reshape(xs[1], (4 * hid, -1)), order, hid), (1, 0))
    w_hh = S.transpose(_gates(E.reshape(xs[2], (4 * hid, hid)), order, hid), (1, 0))
    if xs[3] is None:
        bias = np.zeros(4 * hid, np.float32)
    else:
        b = E.reshape(xs[3], (8 * hid,))
        bias = _gates(E.add(S.slice_(b, (slice(0, 4 * hid),)),
                            S.slice_(b, (slice(4 * hid, 8 * hid),))), order, hid)
    hs = E.lstm(x, w_ih, w_hh, bias, _state(xs[5], hid), _state(xs[6], hid))
    return _rnn_outputs(hs, batch_first, hid)


@register("GRU", attrs={**_RNN_ATTRS, "linear_before_reset": one_of(1)}, settings=(4,),
          min_inputs=3, outputs=2)
def _gru(rt: Any, node: NodeSpec, xs: list[Value]) -> list[Value]:
    xs = xs + [None] * (6 - len(xs))
    if node.attrs.get("activations", ["Sigmoid", "Tanh"]) != ["Sigmoid", "Tanh"]:
        raise ValueError("only the default activations are supported")
    x, hid, batch_first = _rnn_io(node, xs, 3)
    order = [1, 0, 2]  # ONNX (z, r, h) -> engine (r, z, n)
    w_ih = S.transpose(_gates(E.reshape(xs[1], (3 * hid, -1)), order, hid), (1, 0))
    w_hh = S.transpose(_gates(E.reshape(xs[2], (3 * hid, hid)), order, hid), (1, 0))
    if xs[3] is None:
        b_ih = b_hh = np.zeros(3 * hid, np.float32)
    else:
        b = E.reshape(xs[3], (6 * hid,))
        b_ih = _gates(S.slice_(b, (slice(0, 3 * hid),)), order, hid)
        b_hh = _gates(S.slice_(b, (slice(3 * hid, 6 * hid),)), order, hid)
    hs = E.gru(x, w_ih, w_hh, b_ih, b_hh, _state(xs[5], hid))
    return _rnn_outputs(hs, batch_first, hid)
