"""Elementwise, matrix, reduction and softmax ops of imported graphs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import engine as E
from ...engine import Tensor
from . import prims_math as P
from .registry import ANY, Value, const, ints, is_const, one_of, register
from .spec import NodeSpec

__all__: list[str] = []

_NP_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
              "Equal": np.equal, "Less": np.less, "Greater": np.greater,
              "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
              "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}
_TENSOR_BINARY = {"Add": E.add, "Sub": E.sub, "Mul": E.mul, "Div": P.div, "Pow": P.pow_}


def _np_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX integer division truncates
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return np.divide(a, b).astype(np.float32)


@register("Add", "Sub", "Mul", "Div", "Pow", layout="elementwise", min_inputs=2)
def _arith(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    a, b = xs
    if is_const(a) and is_const(b):
        if node.op == "Div":
            return _np_div(a, b)
        out = _NP_BINARY[node.op](a, b)
        return out.astype(np.float32) if out.dtype.kind == "f" else out
    return _TENSOR_BINARY[node.op](a, b)


@register("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor",
          min_inputs=2)
def _compare(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    return _NP_BINARY[node.op](const(xs[0]), const(xs[1]))  # never differentiable


@register("Not")
def _not(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    return np.logical_not(const(xs[0]))


@register("Mod", attrs={"fmod": ANY}, min_inputs=2)
def _mod(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    a, b = const(xs[0]), const(xs[1])
    return np.fmod(a, b) if node.attrs.get("fmod", 0) else np.mod(a, b)


@register("Where", layout="elementwise", min_inputs=3)
def _where(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    cond, a, b = xs
    if is_const(a) and is_const(b):
        return np.where(const(cond), a, b)
    return P.where(const(cond, "Where's condition"), a, b)


_NP_UNARY = {"Relu": lambda x: np.maximum(x, 0), "Neg": np.negative, "Sqrt": np.sqrt,
             "Exp": np.exp, "Log": np.log, "Tanh": np.tanh, "Erf": P.erf_array,
             "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Abs": np.abs, "Floor": np.floor,
             "Ceil": np.ceil, "Reciprocal": lambda x: 1 / x}
_TENSOR_UNARY = {"Relu": E.relu, "Neg": E.neg, "Sqrt": P.sqrt, "Exp": P.exp, "Log": P.log,
                 "Tanh": E.tanh, "Erf": P.erf, "Sigmoid": E.sigmoid,
                 "Reciprocal": lambda x: P.div(np.float32(1), x)}


@register("Relu", "Neg", "Sqrt", "Exp", "Log", "Tanh", "Erf", "Sigmoid", "Reciprocal",
          layout="elementwise")
def _unary(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    if is_const(x):
        out = _NP_UNARY[node.op](x)
        return out.astype(np.float32) if out.dtype.kind == "f" else out
    return _TENSOR_UNARY[node.op](x)


@register("Abs", "Floor", "Ceil")
def _const_unary(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    return _NP_UNARY[node.op](const(xs[0], f"{node.op}'s input"))


@register("Gelu", layout="elementwise", attrs={"approximate": one_of("none", "tanh")})
def _gelu(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    exact = node.attrs.get("approximate", "none") == "none"
    return P.gelu_exact(x) if exact else E.gelu(x)


@register("LeakyRelu", layout="elementwise", attrs={"alpha": ANY})
def _leaky(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    return P.leaky_relu(xs[0], node.attrs.get("alpha", 0.01))


@register("Clip", layout="elementwise", settings=(1, 2))
def _clip(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    lo = float(const(xs[1], "Clip's min")) if len(xs) > 1 and xs[1] is not None else -np.inf
    hi = float(const(xs[2], "Clip's max")) if len(xs) > 2 and xs[2] is not None else np.inf
    if is_const(xs[0]):
        return np.clip(xs[0], lo, hi)
    return P.clip(xs[0], lo, hi)


@register("Identity", layout="elementwise")
def _identity(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    return xs[0]


_CAST = {1: np.float32, 10: np.float32, 11: np.float32, 16: np.float32, 6: np.int64,
         7: np.int64, 3: np.int64, 2: np.int64, 9: np.bool_}


@register("Cast", layout="elementwise",
          attrs={"to": lambda v: v in _CAST, "saturate": ANY, "round_mode": ANY})
def _cast(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x, to = xs[0], _CAST[node.attrs["to"]]
    if isinstance(x, Tensor):
        if to is np.float32 and x.dtype == np.float32:
            return x
        return x.data.astype(to)  # to integers or booleans: not differentiable
    return np.asarray(x).astype(to)


# -- matrix products -------------------------------------------------------------------------
@register("MatMul", min_inputs=2)
def _matmul(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    a, b = xs
    if is_const(a) and is_const(b):
        return np.matmul(a, b)
    if a.ndim == 2 and b.ndim == 2:
        return E.matmul(a, b)
    return P.bmm(a, b)


@register("Gemm", attrs={"alpha": ANY, "beta": ANY, "transA": one_of(0, 1),
                         "transB": one_of(0, 1)}, min_inputs=2)
def _gemm(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    from .prims_shape import transpose

    a, b = xs[0], xs[1]
    c = xs[2] if len(xs) > 2 else None
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if node.attrs.get("transA", 0):
        a = transpose(a, (1, 0))
    if node.attrs.get("transB", 0):
        b = transpose(b, (1, 0))
    if c is not None and alpha == 1.0 and beta == 1.0 and c.ndim == 1:
        return E.linear(a, b, c)
    y = E.matmul(a, b)
    if alpha != 1.0:
        y = E.mul(y, np.float32(alpha))
    if c is not None:
        y = E.add(y, c if beta == 1.0 else E.mul(c, np.float32(beta)))
    return y


# -- reductions and softmax ------------------------------------------------------------------
def _axes(rt: Any, node: NodeSpec, xs: list[Value], rank: int) -> tuple[int, ...] | None:
    if "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    elif len(xs) > 1 and xs[1] is not None:
        axes = ints(xs[1], "axes")
    else:
        axes = []
    if not axes:
        return () if node.attrs.get("noop_with_empty_axes", 0) else None
    return tuple(sorted(a % rank for a in axes))


@register("ReduceMean", "ReduceSum",
          attrs={"axes": ANY, "keepdims": one_of(0, 1), "noop_with_empty_axes": one_of(0, 1)},
          settings=(1,))
def _reduce(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    axes = _axes(rt, node, xs, x.ndim)
    if axes == ():
        return x
    keep = bool(node.attrs.get("keepdims", 1))
    if is_const(x):
        fn = np.mean if node.op == "ReduceMean" else np.sum
        return fn(x, axis=axes, keepdims=keep)
    fn = E.mean if node.op == "ReduceMean" else E.sum
    return fn(x, axis=axes, keepdims=keep)


@register("Softmax", "LogSoftmax", attrs={"axis": ANY})
def _softmax(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    axis = int(node.attrs.get("axis", -1)) % x.ndim
    if node.op == "Softmax":
        return E.softmax(x, axis)
    return E.log_softmax(x, axis)
