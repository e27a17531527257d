"""Data-movement primitives for imported graphs: transpose, concat, slice, take, expand, tile,
pad. Each copies into a pool buffer (contiguous outputs keep the following GEMMs fast) and has
the adjoint data movement as its VJP."""

from __future__ import annotations

import numpy as np

from ...engine import Tensor, unbroadcast
from ...engine.autograd import Ctx, Primitive, apply, defvjp
from ...engine.ops import Operand, tensor

__all__ = ["broadcast_to", "concat", "pad", "slice_", "take", "tile", "transpose"]

#: concat's VJP table needs one entry per input; graphs concatenating more are refused
MAX_CONCAT = 256


def _copy(ctx: Ctx, src: np.ndarray) -> np.ndarray:
    out = ctx.alloc(src.shape, src.dtype)
    np.copyto(out, src)
    return out


def _transpose_fwd(ctx: Ctx, x: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    return _copy(ctx, x.transpose(perm))


transpose_p = Primitive("onnx_transpose", _transpose_fwd)
defvjp(transpose_p, lambda ctx, g: g.transpose(np.argsort(ctx.params["perm"])))


def transpose(x: Operand, perm: tuple[int, ...]) -> Tensor:
    """`x` with its axes permuted (a contiguous copy)."""
    return apply(transpose_p, tensor(x), perm=tuple(int(p) for p in perm))


def _concat_fwd(ctx: Ctx, *xs: np.ndarray, axis: int) -> np.ndarray:
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    dtype = np.result_type(*xs)
    return np.concatenate(xs, axis=axis, out=ctx.alloc(tuple(shape), dtype))


def _concat_vjp(i: int):  # noqa: ANN202
    def vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
        axis = ctx.params["axis"]
        lo = sum(s[axis] for s in ctx.shapes[:i])
        index = [slice(None)] * g.ndim
        index[axis] = slice(lo, lo + ctx.shapes[i][axis])
        return g[tuple(index)]
    return vjp


concat_p = Primitive("onnx_concat", _concat_fwd)
defvjp(concat_p, *(_concat_vjp(i) for i in range(MAX_CONCAT)))


def concat(xs: list[Operand], axis: int) -> Tensor:
    """Join tensors along `axis` (all other axes equal)."""
    if len(xs) > MAX_CONCAT:
        raise ValueError(f"concat: at most {MAX_CONCAT} inputs, got {len(xs)}")
    return apply(concat_p, *[tensor(x) for x in xs], axis=int(axis))


def _slice_fwd(ctx: Ctx, x: np.ndarray, index: tuple[slice, ...]) -> np.ndarray:
    return _copy(ctx, x[index])


def _slice_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    dx = np.zeros(ctx.shapes[0], g.dtype)
    dx[ctx.params["index"]] = g
    return dx


slice_p = Primitive("onnx_slice", _slice_fwd)
defvjp(slice_p, _slice_vjp)


def slice_(x: Operand, index: tuple[slice, ...]) -> Tensor:
    """`x[index]` for a tuple of slices (one per leading axis)."""
    return apply(slice_p, tensor(x), index=tuple(index))


def _take_fwd(ctx: Ctx, x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    return _copy(ctx, np.take(x, idx, axis=axis))


def _take_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    axis, idx = ctx.params["axis"], ctx.params["idx"]
    dx = np.zeros(ctx.shapes[0], g.dtype)
    moved = np.moveaxis(dx, axis, 0)
    gm = np.moveaxis(g, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    np.add.at(moved, idx, gm)  # repeated indices accumulate
    return dx


take_p = Primitive("onnx_take", _take_fwd)
defvjp(take_p, _take_vjp)


def take(x: Operand, idx: np.ndarray, axis: int) -> Tensor:
    """`np.take(x, idx, axis)` for constant integer indices (negative ones already wrapped)."""
    idx = np.asarray(idx, np.int64)
    t = tensor(x)
    return apply(take_p, t, idx=idx, axis=int(axis) % t.ndim)


def _broadcast_fwd(ctx: Ctx, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return _copy(ctx, np.broadcast_to(x, shape))


broadcast_p = Primitive("onnx_expand", _broadcast_fwd)
defvjp(broadcast_p, lambda ctx, g: unbroadcast(g, ctx.shapes[0]))


def broadcast_to(x: Operand, shape: tuple[int, ...]) -> Tensor:
    """`x` broadcast to `shape` (a copy)."""
    return apply(broadcast_p, tensor(x), shape=tuple(int(s) for s in shape))


def _tile_fwd(ctx: Ctx, x: np.ndarray, reps: tuple[int, ...]) -> np.ndarray:
    return _copy(ctx, np.tile(x, reps))


def _tile_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    shape, reps = ctx.shapes[0], ctx.params["reps"]
    split = [d for pair in zip(reps, shape, strict=True) for d in pair]
    return g.reshape(split).sum(axis=tuple(range(0, 2 * len(shape), 2)))


tile_p = Primitive("onnx_tile", _tile_fwd)
defvjp(tile_p, _tile_vjp)


def tile(x: Operand, reps: tuple[int, ...]) -> Tensor:
    """`x` repeated `reps[i]` times along each axis i (reps has x's rank)."""
    return apply(tile_p, tensor(x), reps=tuple(int(r) for r in reps))


def _pad_fwd(ctx: Ctx, x: np.ndarray, widths: tuple[tuple[int, int], ...],
             value: float) -> np.ndarray:
    shape = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, widths, strict=True))
    out = ctx.alloc(shape, x.dtype)
    out.fill(value)
    out[tuple(slice(lo, lo + n) for n, (lo, _) in zip(x.shape, widths, strict=True))] = x
    return out


def _pad_vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    widths = ctx.params["widths"]
    return g[tuple(slice(lo, lo + n) for n, (lo, _) in zip(ctx.shapes[0], widths, strict=True))]


pad_p = Primitive("onnx_pad", _pad_fwd)
defvjp(pad_p, _pad_vjp)


def pad(x: Operand, widths: tuple[tuple[int, int], ...], value: float = 0.0) -> Tensor:
    """`x` with (before, after) borders of `value` on each axis (non-negative widths)."""
    return apply(pad_p, tensor(x), widths=tuple((int(a), int(b)) for a, b in widths),
                 value=float(value))
