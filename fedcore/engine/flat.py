"""Flat parameter buffers: many tensors as views into ONE contiguous float32 buffer.

Federated rounds ship a model as one flat vector plus a layout; keeping parameters (and their
gradients) as views into a single buffer makes `get_flat`/`set_flat` a single copy and lets an
optimizer update the whole model in one vectorised op. Writing the buffer bumps the version of
every parameter (they share the root var), which is exactly what autograd must see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engine import get_engine
from .tensor import Tensor
from .var import Var

__all__ = ["FlatLayout", "find_flat", "flatten_tensors"]


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor lives in the flat buffer; attached to the buffer's root var (`meta`)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    size: int
    members: tuple[int, ...]  # uids of the view vars, in order
    grads: Var  # root var of the matching flat gradient buffer

    def slices(self) -> dict[str, slice]:
        """Name -> slice of the flat vector."""
        return {
            n: slice(o, o + int(np.prod(s)))
            for n, s, o in zip(self.names, self.shapes, self.offsets, strict=True)
        }


def flatten_tensors(tensors: Sequence[Tensor], names: Sequence[str]) -> FlatLayout:
    """Move `tensors` (values and any grads) into one param buffer and one zeroed grad buffer.

    The tensor objects are kept (optimizers holding them stay valid); their vars become views.
    """
    if len(tensors) != len(names):
        raise ValueError(f"{len(tensors)} tensors but {len(names)} names")
    for t, n in zip(tensors, names, strict=True):
        if t.dtype != np.float32:
            raise TypeError(f"parameter '{n}' is {t.dtype}; flat buffers hold float32")
    shapes = tuple(t.shape for t in tensors)
    sizes = [t.size for t in tensors]
    offsets = tuple(int(o) for o in np.cumsum([0, *sizes[:-1]])) if sizes else ()
    total = int(sum(sizes))
    eng = get_engine()
    proot = Var(eng.pool.alloc((total,), what="flat parameters"), "flat_params")
    groot = Var(eng.pool.zeros((total,), what="flat gradients"), "flat_grads")
    old_vars = [t._var for t in tensors]
    old_grads = [t._grad for t in tensors if t._grad is not None]

    olds = [(t._var, t._grad) for t in tensors]  # the op may run after the swap below

    def copy_in() -> None:
        for (v, g), off, k in zip(olds, offsets, sizes, strict=True):
            proot.data[off:off + k] = v.data.ravel()
            if g is not None:
                groot.data[off:off + k] = g.data.ravel()

    eng.push(copy_in, old_vars + old_grads, (proot, groot), "flatten_parameters")
    for t, n, off, k, shape in zip(tensors, names, offsets, sizes, shapes, strict=True):
        t._var = proot.view(proot.data[off:off + k].reshape(shape), n)
        t._grad = groot.view(groot.data[off:off + k].reshape(shape), f"{n}.grad")
    layout = FlatLayout(tuple(names), shapes, offsets, total,
                        tuple(t._var.uid for t in tensors), groot)
    proot.meta = layout
    return layout


def find_flat(tensors: Sequence[Tensor]) -> tuple[Var, Var, FlatLayout] | None:
    """(param root, grad root, layout) if `tensors` are exactly one flat buffer, in order."""
    if not tensors:
        return None
    root = tensors[0]._var.root
    layout = root.meta
    if not isinstance(layout, FlatLayout) or len(layout.members) != len(tensors):
        return None
    groot = layout.grads
    for t, uid in zip(tensors, layout.members, strict=True):
        g = t._grad
        if t._var.uid != uid or g is None or g.root is not groot:
            return None
    return root, groot, layout
