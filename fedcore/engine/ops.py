"""Differentiable primitives: each forward sits next to its VJPs (MLX style).

Forwards compute into buffers from the engine's pool; VJPs are registered in the table with
`defvjp` and never mutate their inputs. Python numbers and numpy arrays are accepted wherever a
Tensor is (as constants). Loss ops live in `fedcore.engine.losses`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .autograd import Ctx, Primitive, apply, apply_inplace, defvjp, defvjp_into
from .channels import channel_op, channel_sum
from .parallel import GRAIN, elementwise
from .parallel import matmul as gemm
from .tensor import Tensor, as_array, is_grad_enabled

__all__ = [
    "add", "add_", "flatten", "linear", "matmul", "matmul_nt", "mean", "mul", "mul_", "neg", "relu",
    "relu_", "reshape", "sub", "sum", "tensor", "unbroadcast",
]

Operand = Tensor | np.ndarray | float | int


def tensor(x: Operand) -> Tensor:
    """`x` itself if it is a Tensor, else a constant Tensor (float32 / int64)."""
    return x if isinstance(x, Tensor) else Tensor(as_array(x))


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `g` over the axes that broadcasting expanded, so it has `shape` again."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1
    )
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _bshape(a: np.ndarray, b: np.ndarray) -> tuple[int, ...]:
    return a.shape if a.shape == b.shape else np.broadcast_shapes(a.shape, b.shape)


def _out_dtype(a: np.ndarray, b: np.ndarray) -> Any:
    return np.float32 if a.dtype == np.float32 or b.dtype == np.float32 else a.dtype


# -- linear algebra ------------------------------------------------------------------------
def _check_2d(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"{name} expects 2-D operands, got shape {a.shape}")


def _matmul_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _check_2d("matmul", a, b)
    return gemm(a, b, out=ctx.alloc((a.shape[0], b.shape[1])))


def _grad_a(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = ctx.alloc((g.shape[0], ctx.args[1].shape[0]), np.result_type(g, ctx.args[1]))
    return gemm(g, ctx.args[1].T, out)  # dA = G B^T


def _grad_b(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return gemm(ctx.args[0].T, g, out)  # dB = A^T G


def _product_work(ctx: Ctx, g: np.ndarray) -> int:
    """Multiply-adds of each gradient of a product with result g and input 0 (..., k)."""
    return g.size * ctx.shapes[0][-1]


matmul_p = Primitive("matmul", _matmul_fwd, saves=(0, 1), reads=((1,), (0,)),
                     vjp_work=_product_work)
defvjp(matmul_p, _grad_a, _grad_b)
defvjp_into(matmul_p, _grad_a, _grad_b)


def _rows(a: np.ndarray) -> np.ndarray:
    """(..., k) as the (rows, k) matrix (a view when a is contiguous)."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


def _linear_fwd(ctx: Ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(f"linear expects an input of at least 2-D (..., in), got {x.shape}")
    _check_2d("linear", w)
    out = ctx.alloc((*x.shape[:-1], w.shape[1]))
    gemm(_rows(x), w, out=_rows(out))
    if out.size < 2 * GRAIN:  # one slab: on folded rows (a 1x1 convolution's few channels)
        return channel_op(np.add, out, b, out)
    return elementwise(np.add, out, out, b)  # the bias row goes to every slab whole


def _linear_grad_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    if g.ndim == 2:
        return _grad_a(ctx, g)
    # the pool's array itself, not a reshaped view of it: the pool counts a buffer live
    # while the array it handed out is alive, and a view keeps only the bytes alive
    dx = ctx.alloc(ctx.shapes[0], np.result_type(g, ctx.args[1]))
    _grad_a(ctx, _rows(g), _rows(dx))
    return dx


def _linear_grad_w(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return gemm(_rows(ctx.args[0]).T, _rows(g), out)  # dW = X^T G over all the rows


def _linear_vjp_bias_into(ctx: Ctx, g: np.ndarray, out: np.ndarray) -> None:
    out[...] = channel_sum(g)


linear_p = Primitive("linear", _linear_fwd, saves=(0, 1), reads=((1,), (0,), ()),
                     vjp_work=_product_work)
# the bias gradient sums g's columns over folded rows: with 16 columns ~10x faster than
# g.sum(axis=0) (fedcore.engine.channels)
defvjp(linear_p, _linear_grad_x, _linear_grad_w, lambda ctx, g: channel_sum(g))
defvjp_into(linear_p, None, _linear_grad_w, _linear_vjp_bias_into)


def _matmul_nt_fwd(ctx: Ctx, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    _check_2d("matmul_nt", a, w)
    return gemm(a, w.T, out=ctx.alloc((a.shape[0], w.shape[0])))


def _nt_grad_a(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = ctx.alloc((g.shape[0], ctx.args[1].shape[1]), np.result_type(g, ctx.args[1]))
    return gemm(g, ctx.args[1], out)  # dA = G W


def _nt_grad_w(ctx: Ctx, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return gemm(g.T, ctx.args[0], out)  # dW = G^T A


matmul_nt_p = Primitive("matmul_nt", _matmul_nt_fwd, saves=(0, 1), reads=((1,), (0,)),
                        vjp_work=_product_work)
defvjp(matmul_nt_p, _nt_grad_a, _nt_grad_w)
defvjp_into(matmul_nt_p, _nt_grad_a, _nt_grad_w)


def matmul(a: Operand, b: Operand) -> Tensor:
    """Matrix product of two 2-D tensors."""
    return apply(matmul_p, tensor(a), tensor(b))


def matmul_nt(a: Operand, w: Operand) -> Tensor:
    """`a @ w.T` for 2-D tensors, without transposing w in memory (a head tied to an
    embedding table (vocab, dim) gives logits (N, vocab) this way)."""
    return apply(matmul_nt_p, tensor(a), tensor(w))


def linear(x: Operand, w: Operand, b: Operand) -> Tensor:
    """Fused `x @ w + b` (one op, one output buffer) for dense layers; w is (in, out), x is
    (..., in) (the leading axes are rows: a 1x1 convolution of NHWC x needs no reshapes)."""
    return apply(linear_p, tensor(x), tensor(w), tensor(b))


# -- elementwise ---------------------------------------------------------------------------
def _add_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.add(a, b, out=ctx.alloc(_bshape(a, b), _out_dtype(a, b)))


def _sub_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.subtract(a, b, out=ctx.alloc(_bshape(a, b), _out_dtype(a, b)))


def _mul_fwd(ctx: Ctx, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.multiply(a, b, out=ctx.alloc(_bshape(a, b), _out_dtype(a, b)))


def _neg_fwd(ctx: Ctx, a: np.ndarray) -> np.ndarray:
    return np.negative(a, out=ctx.alloc(a.shape, a.dtype))


def _relu_fwd(ctx: Ctx, x: np.ndarray) -> np.ndarray:
    return elementwise(np.maximum, ctx.alloc(x.shape, x.dtype), x, 0)


def _masked(g: np.ndarray, ans: np.ndarray, out: np.ndarray) -> None:
    np.multiply(g, ans > 0, out=out)  # a mask of the saved output: no copy of the input


def _relu_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return elementwise(_masked, ctx.alloc(g.shape, np.result_type(g, ctx.ans).type), g, ctx.ans)


add_p = Primitive("add", _add_fwd)
defvjp(add_p, lambda ctx, g: unbroadcast(g, ctx.shapes[0]),
       lambda ctx, g: unbroadcast(g, ctx.shapes[1]))
sub_p = Primitive("sub", _sub_fwd)
defvjp(sub_p, lambda ctx, g: unbroadcast(g, ctx.shapes[0]),
       lambda ctx, g: np.negative(unbroadcast(g, ctx.shapes[1])))
mul_p = Primitive("mul", _mul_fwd, saves=(0, 1), reads=((1,), (0,)))
defvjp(mul_p, lambda ctx, g: unbroadcast(g * ctx.args[1], ctx.shapes[0]),
       lambda ctx, g: unbroadcast(g * ctx.args[0], ctx.shapes[1]))
neg_p = Primitive("neg", _neg_fwd)
defvjp(neg_p, lambda ctx, g: np.negative(g))
relu_p = Primitive("relu", _relu_fwd, saves_output=True)
defvjp(relu_p, _relu_vjp)


def add(a: Operand, b: Operand) -> Tensor:
    """Elementwise a + b with numpy broadcasting (e.g. a bias row)."""
    return apply(add_p, tensor(a), tensor(b))


def sub(a: Operand, b: Operand) -> Tensor:
    """Elementwise a - b with broadcasting."""
    return apply(sub_p, tensor(a), tensor(b))


def mul(a: Operand, b: Operand) -> Tensor:
    """Elementwise a * b with broadcasting."""
    return apply(mul_p, tensor(a), tensor(b))


def neg(a: Operand) -> Tensor:
    """Elementwise -a."""
    return apply(neg_p, tensor(a))


def relu(x: Operand) -> Tensor:
    """max(x, 0); backward masks with the saved output."""
    return apply(relu_p, tensor(x))


# -- in place ------------------------------------------------------------------------------
def _add_inplace_fwd(ctx: Ctx, t: np.ndarray, o: np.ndarray) -> None:
    np.add(t, o, out=t)


def _mul_inplace_fwd(ctx: Ctx, t: np.ndarray, o: np.ndarray, keep_old: bool) -> None:
    if keep_old:  # d(out)/d(other) needs the value about to be overwritten
        ctx.old = ctx.alloc(t.shape, t.dtype)
        np.copyto(ctx.old, t)
    np.multiply(t, o, out=t)


def _relu_inplace_fwd(ctx: Ctx, t: np.ndarray) -> None:
    elementwise(np.maximum, t, t, 0)


add_inplace_p = Primitive("add_", _add_inplace_fwd, inplace=True)
defvjp(add_inplace_p, lambda ctx, g: g, lambda ctx, g: unbroadcast(g, ctx.shapes[1]))
mul_inplace_p = Primitive("mul_", _mul_inplace_fwd, saves=(1,), inplace=True)
defvjp(mul_inplace_p, lambda ctx, g: unbroadcast(g * ctx.args[1], ctx.shapes[0]),
       lambda ctx, g: unbroadcast(g * ctx.old, ctx.shapes[1]))
relu_inplace_p = Primitive("relu_", _relu_inplace_fwd, saves_output=True, inplace=True)
defvjp(relu_inplace_p, _relu_vjp)


def add_(x: Tensor, other: Operand) -> Tensor:
    """x += other in place (bumps x's version); returns x."""
    return apply_inplace(add_inplace_p, x, tensor(other))


def mul_(x: Tensor, other: Operand) -> Tensor:
    """x *= other in place (bumps x's version); returns x."""
    o = tensor(other)
    return apply_inplace(mul_inplace_p, x, o, keep_old=o._node is not None and is_grad_enabled())


def relu_(x: Tensor) -> Tensor:
    """x = max(x, 0) in place (bumps x's version); returns x."""
    return apply_inplace(relu_inplace_p, x)


# -- shape ---------------------------------------------------------------------------------
def _reshape_fwd(ctx: Ctx, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return x.reshape(shape)


reshape_p = Primitive("reshape", _reshape_fwd, view=True)
defvjp(reshape_p, lambda ctx, g: g.reshape(ctx.shapes[0]))


def reshape(x: Operand, *shape: int | tuple[int, ...]) -> Tensor:
    """A view of x with a new shape (shares x's buffer and version; no copy)."""
    if len(shape) == 1 and isinstance(shape[0], tuple | list):
        shape = tuple(shape[0])
    return apply(reshape_p, tensor(x), shape=tuple(shape))


def flatten(x: Operand) -> Tensor:
    """Keep the first (batch) axis, flatten the rest: (N, ...) -> (N, prod(...))."""
    t = tensor(x)
    return reshape(t, t.shape[0], -1)


# -- reductions ----------------------------------------------------------------------------
Axis = int | tuple[int, ...] | None


def _sum_fwd(ctx: Ctx, x: np.ndarray, axis: Axis, keepdims: bool) -> np.ndarray:
    return ctx.pool.track(np.asarray(np.sum(x, axis=axis, keepdims=keepdims)))


def _mean_fwd(ctx: Ctx, x: np.ndarray, axis: Axis, keepdims: bool) -> np.ndarray:
    return ctx.pool.track(np.asarray(np.mean(x, axis=axis, keepdims=keepdims)))


def _expand(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    """Broadcast a reduced gradient back to the input shape (a read-only view, no copy)."""
    shape = ctx.shapes[0]
    axis = ctx.params["axis"]
    if axis is not None and not ctx.params["keepdims"]:
        g = np.expand_dims(g, axis)
    return np.broadcast_to(g, shape)


def _mean_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    count = int(np.prod(ctx.shapes[0])) // max(g.size, 1)
    return _expand(ctx, g / count)


sum_p = Primitive("sum", _sum_fwd)
defvjp(sum_p, _expand)
mean_p = Primitive("mean", _mean_fwd)
defvjp(mean_p, _mean_vjp)


def sum(x: Operand, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Sum over `axis` (all axes by default)."""
    return apply(sum_p, tensor(x), axis=axis, keepdims=keepdims)


def mean(x: Operand, axis: Axis = None, keepdims: bool = False) -> Tensor:
    """Mean over `axis` (all axes by default)."""
    return apply(mean_p, tensor(x), axis=axis, keepdims=keepdims)


# -- Tensor methods and operators ----------------------------------------------------------
def _bind() -> None:
    T = Tensor  # noqa: N806
    T.__add__ = add
    T.__radd__ = lambda self, other: add(other, self)
    T.__sub__ = sub
    T.__rsub__ = lambda self, other: sub(other, self)
    T.__mul__ = mul
    T.__rmul__ = lambda self, other: mul(other, self)
    T.__matmul__ = matmul
    T.__rmatmul__ = lambda self, other: matmul(other, self)
    T.__neg__ = neg
    for fn in (relu, reshape, flatten, sum, mean, add_, mul_, relu_):
        setattr(T, fn.__name__, fn)


_bind()
