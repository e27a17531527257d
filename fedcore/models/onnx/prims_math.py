"""Elementwise and matrix primitives ONNX graphs need beyond the engine's own ops.

Each is an engine `Primitive` with its VJPs (so autograd, the mutation checks, the memory pool
and hybridize's fallback path all see it): N-D broadcasting matmul, division, power, square
root, exp, log, erf (and exact GELU built on it), leaky ReLU, clip and `where`. erf has no
numpy ufunc and scipy is not a device dependency, so it is a rational approximation computed
in float64 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7), well inside float32 training noise.
"""

from __future__ import annotations

import math

import numpy as np

from ...engine import Tensor, unbroadcast
from ...engine.autograd import Ctx, Primitive, apply, defvjp
from ...engine.ops import Operand, _bshape, _out_dtype, tensor
from ...engine.parallel import matmul as gemm

__all__ = ["bmm", "clip", "div", "erf", "exp", "gelu_exact", "leaky_relu", "log", "pow_",
           "sqrt", "where"]


# -- matmul with numpy broadcasting -------------------------------------------------------
def _bmm_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim >= 2 and b.ndim == 2:  # activations times a weight: one 2-D GEMM
        out = gemm(a.reshape(-1, a.shape[-1]), b)
        return ctx.pool.track(out.reshape(*a.shape[:-1], b.shape[1]))
    return ctx.pool.track(np.matmul(a, b))


def _bmm_grad_a(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    a_shape, b = ctx.shapes[0], ctx.args[1]
    if b.ndim == 1:
        return unbroadcast(np.multiply.outer(g, b), a_shape)
    if len(a_shape) == 1:
        return unbroadcast(np.matmul(g[..., None, :], np.swapaxes(b, -1, -2))[..., 0, :],
                           a_shape)
    return unbroadcast(np.matmul(g, np.swapaxes(b, -1, -2)), a_shape)


def _bmm_grad_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    a, b_shape = ctx.args[0], ctx.shapes[1]
    if a.ndim >= 2 and len(b_shape) == 2:  # fold every leading axis into one GEMM
        return gemm(a.reshape(-1, a.shape[-1]).T, g.reshape(-1, g.shape[-1]))
    if a.ndim == 1:
        return unbroadcast(np.multiply.outer(a, g) if len(b_shape) == 2 else
                           a[..., :, None] * g[..., None, :], b_shape)
    if len(b_shape) == 1:
        return unbroadcast(np.matmul(np.swapaxes(a, -1, -2), g[..., None])[..., 0], b_shape)
    return unbroadcast(np.matmul(np.swapaxes(a, -1, -2), g), b_shape)


bmm_p = Primitive("onnx_matmul", _bmm_fwd, saves=(0, 1))
defvjp(bmm_p, _bmm_grad_a, _bmm_grad_b)


def bmm(a: Operand, b: Operand) -> Tensor:
    """`np.matmul` semantics (batched, broadcasting, 1-D operands) with gradients."""
    return apply(bmm_p, tensor(a), tensor(b))


# -- binary elementwise --------------------------------------------------------------------
def _div_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=ctx.alloc(_bshape(a, b), _out_dtype(a, b)))


def _pow_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.power(a, b, out=ctx.alloc(_bshape(a, b), _out_dtype(a, b)))


def _pow_grad_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    a = ctx.args[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = g * ctx.ans * np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
    return unbroadcast(d, ctx.shapes[1])


div_p = Primitive("onnx_div", _div_fwd, saves=(0, 1), saves_output=True)
defvjp(div_p, lambda ctx, g: unbroadcast(g / ctx.args[1], ctx.shapes[0]),
       lambda ctx, g: unbroadcast(-g * ctx.ans / ctx.args[1], ctx.shapes[1]))
pow_p = Primitive("onnx_pow", _pow_fwd, saves=(0, 1), saves_output=True)
defvjp(pow_p,
       lambda ctx, g: unbroadcast(g * ctx.args[1] * np.power(ctx.args[0], ctx.args[1] - 1),
                                  ctx.shapes[0]),
       _pow_grad_b)


def div(a: Operand, b: Operand) -> Tensor:
    """Elementwise a / b with broadcasting."""
    return apply(div_p, tensor(a), tensor(b))


def pow_(a: Operand, b: Operand) -> Tensor:
    """Elementwise a ** b with broadcasting (the exponent's gradient uses log a, 0 where a <= 0)."""
    return apply(pow_p, tensor(a), tensor(b))


def _where_fwd(ctx: Ctx, cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
    out = ctx.alloc(shape, _out_dtype(a, b))
    np.copyto(out, np.where(cond, a, b))
    return out


where_p = Primitive("onnx_where", _where_fwd, saves=(0,))
defvjp(where_p, None,
       lambda ctx, g: unbroadcast(np.where(ctx.args[0], g, 0).astype(g.dtype), ctx.shapes[1]),
       lambda ctx, g: unbroadcast(np.where(ctx.args[0], 0, g).astype(g.dtype), ctx.shapes[2]))


def where(cond: Operand, a: Operand, b: Operand) -> Tensor:
    """`a` where `cond` holds, else `b` (broadcasting); differentiable in `a` and `b`."""
    return apply(where_p, tensor(np.asarray(cond, bool)), tensor(a), tensor(b))


# -- unary elementwise ---------------------------------------------------------------------
def _unary(name: str, fwd, vjp, saves_input: bool = False) -> Primitive:  # noqa: ANN001
    def forward(ctx: Ctx, x: np.ndarray, **params: float) -> np.ndarray:
        out = ctx.alloc(x.shape, x.dtype if x.dtype.kind == "f" else np.float32)
        np.copyto(out, fwd(x, **params))
        return out

    prim = Primitive(name, forward, saves=(0,) if saves_input else (),
                     saves_output=not saves_input)
    defvjp(prim, vjp)
    return prim


_SQRT2 = math.sqrt(2.0)
_ERF_P, _ERF_A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf_array(x: np.ndarray) -> np.ndarray:
    """erf(x) to |error| < 1.5e-7 (A&S 7.1.26, in float64), in x's float dtype."""
    z = np.abs(x, dtype=np.float64)
    t = 1.0 / (1.0 + _ERF_P * z)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    y = 1.0 - poly * np.exp(-z * z)
    return np.copysign(y, x).astype(x.dtype if x.dtype.kind == "f" else np.float32)


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf_array(x / np.asarray(_SQRT2, x.dtype)))


def _gelu_exact_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    x = ctx.args[0]
    cdf = 0.5 * (1.0 + erf_array(x / np.asarray(_SQRT2, x.dtype)))
    pdf = np.exp(-0.5 * x * x) * np.asarray(1.0 / math.sqrt(2 * math.pi), x.dtype)
    return g * (cdf + x * pdf)


sqrt_p = _unary("onnx_sqrt", np.sqrt, lambda ctx, g: g * 0.5 / ctx.ans)
exp_p = _unary("onnx_exp", np.exp, lambda ctx, g: g * ctx.ans)
log_p = _unary("onnx_log", np.log, lambda ctx, g: g / ctx.args[0], saves_input=True)
erf_p = _unary("onnx_erf", erf_array,
               lambda ctx, g: g * (2.0 / math.sqrt(math.pi)) * np.exp(-ctx.args[0] ** 2),
               saves_input=True)
gelu_exact_p = _unary("onnx_gelu", _gelu_exact, _gelu_exact_vjp, saves_input=True)
leaky_relu_p = _unary(
    "onnx_leaky_relu", lambda x, alpha: np.where(x >= 0, x, x * np.asarray(alpha, x.dtype)),
    lambda ctx, g: np.where(ctx.args[0] >= 0, g, g * np.asarray(ctx.params["alpha"], g.dtype)),
    saves_input=True)
clip_p = _unary(
    "onnx_clip", lambda x, lo, hi: np.clip(x, lo, hi),
    lambda ctx, g: g * ((ctx.args[0] >= ctx.params["lo"]) & (ctx.args[0] <= ctx.params["hi"])),
    saves_input=True)


def sqrt(x: Operand) -> Tensor:
    """Elementwise square root."""
    return apply(sqrt_p, tensor(x))


def exp(x: Operand) -> Tensor:
    """Elementwise e ** x."""
    return apply(exp_p, tensor(x))


def log(x: Operand) -> Tensor:
    """Elementwise natural logarithm."""
    return apply(log_p, tensor(x))


def erf(x: Operand) -> Tensor:
    """Elementwise error function."""
    return apply(erf_p, tensor(x))


def gelu_exact(x: Operand) -> Tensor:
    """GELU with the exact normal CDF: 0.5 x (1 + erf(x / sqrt 2))."""
    return apply(gelu_exact_p, tensor(x))


def leaky_relu(x: Operand, alpha: float) -> Tensor:
    """x where x >= 0, else alpha * x."""
    return apply(leaky_relu_p, tensor(x), alpha=float(alpha))


def clip(x: Operand, lo: float, hi: float) -> Tensor:
    """x clamped to [lo, hi]; the gradient passes where x lies inside (bounds included)."""
    return apply(clip_p, tensor(x), lo=float(lo), hi=float(hi))
