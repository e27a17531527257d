"""Shape and data-movement ops of imported graphs (Shape itself lives in the interpreter)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ... import engine as E
from ...engine import Tensor
from . import prims_shape as S
from .registry import ANY, Value, const, ints, is_const, one_of, register
from .spec import NodeSpec

__all__: list[str] = []

#: the most elements a constant computed from the graph's own numbers may have (ConstantOfShape,
#: Expand, Tile, Range): a file must not make the importer allocate without bound
MAX_CONST_ELEMENTS = 1 << 26


def _bounded(shape: tuple[int, ...] | list[int], what: str) -> None:
    n = math.prod(int(d) for d in shape)
    if any(int(d) < 0 for d in shape) or n > MAX_CONST_ELEMENTS:
        raise ValueError(f"{what} would make a constant of shape {tuple(shape)} (at most "
                         f"{MAX_CONST_ELEMENTS} elements)")


def _target_shape(x_shape: tuple[int, ...], shape: list[int], allowzero: bool) -> list[int]:
    out = [x_shape[i] if d == 0 and not allowzero and i < len(x_shape) else d
           for i, d in enumerate(shape)]
    if out.count(-1) > 1:
        raise ValueError(f"Reshape: more than one -1 in {shape}")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(x_shape)
        if known == 0 or total % known:
            raise ValueError(f"Reshape: cannot reshape {x_shape} into {shape}")
        out[out.index(-1)] = total // known
    if math.prod(out) != math.prod(x_shape):
        raise ValueError(f"Reshape: cannot reshape {x_shape} into {shape}")
    return out


def _reshape(x: Value, shape: list[int]) -> Value:
    if is_const(x):
        return x.reshape(shape)
    return E.reshape(x, tuple(shape))


@register("Reshape", attrs={"allowzero": one_of(0, 1)}, settings=(1,), min_inputs=2)
def _reshape_op(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    shape = _target_shape(x.shape, ints(xs[1], "Reshape's shape"),
                          bool(node.attrs.get("allowzero", 0)))
    return _reshape(x, shape)


@register("Flatten", attrs={"axis": ANY})
def _flatten(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    axis = int(node.attrs.get("axis", 1)) % (x.ndim + 1) if x.ndim else 0
    return _reshape(x, [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])])


@register("Unsqueeze", settings=(1,), min_inputs=2)
def _unsqueeze(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    rank = x.ndim + len(ints(xs[1], "axes"))
    axes = sorted(a % rank for a in ints(xs[1], "axes"))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return _reshape(x, shape)


@register("Squeeze", settings=(1,))
def _squeeze(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    if len(xs) > 1 and xs[1] is not None:
        axes = {a % x.ndim for a in ints(xs[1], "axes")}
        if any(x.shape[a] != 1 for a in axes):
            raise ValueError(f"Squeeze: axes {sorted(axes)} of {x.shape} are not all 1")
    else:
        axes = {i for i, d in enumerate(x.shape) if d == 1}
    return _reshape(x, [d for i, d in enumerate(x.shape) if i not in axes])


@register("Transpose", attrs={"perm": ANY})
def _transpose(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    perm = node.attrs.get("perm", list(range(x.ndim))[::-1])
    if is_const(x):
        return np.ascontiguousarray(x.transpose(perm))
    return S.transpose(x, tuple(perm))


@register("Concat", attrs={"axis": ANY})
def _concat(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    parts = [x for x in xs if x is not None]
    axis = int(node.attrs["axis"]) % parts[0].ndim
    if all(is_const(p) for p in parts):
        return np.concatenate(parts, axis=axis)
    return S.concat(parts, axis)


def _slice(x: Value, index: tuple[slice, ...]) -> Value:
    return x[index] if is_const(x) else S.slice_(x, index)


@register("Split", attrs={"axis": ANY, "num_outputs": ANY}, settings=(1,), outputs=1 << 16)
def _split(rt: Any, node: NodeSpec, xs: list[Value]) -> list[Value]:
    x = xs[0]
    axis = int(node.attrs.get("axis", 0)) % x.ndim
    n = x.shape[axis]
    if len(xs) > 1 and xs[1] is not None:
        sizes = ints(xs[1], "split")
    else:
        k = int(node.attrs.get("num_outputs", len(node.outputs)))
        step = -(-n // k)
        sizes = [min(step, n - i * step) for i in range(k)]
    if sum(sizes) != n or any(s < 0 for s in sizes):
        raise ValueError(f"Split: sizes {sizes} do not add up to {n} along axis {axis}")
    out, lo = [], 0
    for s in sizes:
        out.append(_slice(x, (slice(None),) * axis + (slice(lo, lo + s),)))
        lo += s
    return out


@register("Slice", settings=(1, 2, 3, 4), min_inputs=3)
def _slice_op(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    starts, ends = ints(xs[1], "starts"), ints(xs[2], "ends")
    axes = ints(xs[3], "axes") if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
    steps = ints(xs[4], "steps") if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st == 0:
            raise ValueError("Slice: a step of 0")
        index[a % x.ndim] = slice(s, e, st)
    return _slice(x, tuple(index))


@register("Gather", attrs={"axis": ANY}, min_inputs=2)
def _gather(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    data, idx = xs
    axis = int(node.attrs.get("axis", 0))
    if is_const(data):
        return np.take(data, np.asarray(const(idx, "Gather's indices")), axis=axis)
    if (axis == 0 and data.ndim == 2 and data.requires_grad and data.is_leaf
            and (isinstance(idx, Tensor) or np.asarray(idx).min(initial=0) >= 0)):
        return E.embedding(idx, data)  # Embedding-as-Gather: the engine's sparse row gradient
    ids = np.asarray(idx.data if isinstance(idx, Tensor) else idx, np.int64)
    n = data.shape[axis % data.ndim]
    return S.take(data, np.where(ids < 0, ids + n, ids), axis)


@register("Expand", settings=(1,), min_inputs=2)
def _expand(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    shape = np.broadcast_shapes(tuple(x.shape), tuple(ints(xs[1], "Expand's shape")))
    if is_const(x):
        _bounded(shape, "Expand")
        return np.broadcast_to(x, shape).copy()
    return x if tuple(x.shape) == shape else S.broadcast_to(x, shape)


@register("Tile", settings=(1,), min_inputs=2)
def _tile(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    reps = ints(xs[1], "Tile's repeats")
    if is_const(xs[0]):
        _bounded([d * r for d, r in zip(xs[0].shape, reps, strict=False)], "Tile")
        return np.tile(xs[0], reps)
    return S.tile(xs[0], tuple(reps))


@register("ConstantOfShape", attrs={"value": ANY})
def _constant_of_shape(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    value = np.asarray(node.attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
    shape = ints(xs[0], "shape")
    _bounded(shape, "ConstantOfShape")
    return np.full(shape, value[0], value.dtype)


@register("Range", min_inputs=3)
def _range(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    start, limit, delta = (const(x, "Range") for x in xs)
    if float(delta) == 0:
        raise ValueError("Range: a delta of 0")
    _bounded([max(0, math.ceil((float(limit) - float(start)) / float(delta)))], "Range")
    return np.arange(start, limit, delta).astype(np.result_type(start, limit, delta))


@register("Trilu", attrs={"upper": one_of(0, 1)}, settings=(1,))
def _trilu(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    x = xs[0]
    k = ints(xs[1], "k")[0] if len(xs) > 1 and xs[1] is not None else 0
    tri = np.triu if node.attrs.get("upper", 1) else np.tril
    if is_const(x):
        return tri(x, k)
    return E.mul(x, tri(np.ones(x.shape[-2:], np.float32), k))


@register("Shape", "Size", attrs={"start": ANY, "end": ANY})
def _shape(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    """Run by the interpreter itself (it knows each value's layout); listed for the checks."""
    raise AssertionError("Shape and Size are evaluated by OnnxModel")


@register("Pad", layout="nhwc", attrs={"mode": one_of("constant")}, settings=(1, 2, 3))
def _pad(rt: Any, node: NodeSpec, xs: list[Value]) -> Value:
    """Constant padding; a 4-D input arrives channels-last, so its (NCHW) widths are permuted."""
    x = xs[0]
    rank = x.ndim
    pads = ints(xs[1], "pads")
    value = float(const(xs[2], "constant_value")) if len(xs) > 2 and xs[2] is not None else 0.0
    axes = ints(xs[3], "axes") if len(xs) > 3 and xs[3] is not None else list(range(rank))
    if len(pads) != 2 * len(axes) or any(p < 0 for p in pads):
        raise ValueError(f"pads {pads} must be {2 * len(axes)} non-negative widths")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a % rank] = (pads[i], pads[i + len(axes)])
    if rank == 4:  # logical (N, C, H, W) widths -> the channels-last data
        widths = [widths[0], widths[2], widths[3], widths[1]]
    if is_const(x):
        _bounded([n + a + b for n, (a, b) in zip(x.shape, widths, strict=True)], "Pad")
        return np.pad(x, widths, constant_values=value)
    return S.pad(x, tuple(widths), value)
