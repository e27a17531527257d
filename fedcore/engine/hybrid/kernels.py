"""Planned kernels: each known primitive's forward and VJPs writing into given buffers.

The eager engine's forwards allocate their outputs and VJPs return new arrays; a planned step
instead hands every kernel its input, output and scratch arrays (views into one arena) and gets
back a zero-argument closure to call on each replay, so a step allocates nothing. Each kernel
performs exactly the numpy calls of the eager op (same ufuncs, same reductions, same BLAS
calls with the same operands), so a planned step matches the eager one to the bit where numpy
is deterministic. Primitives without a spec here still run, through `fallback`.

A spec also tells the planner what it may do: which inputs the output may overwrite
(`fwd_inplace`), what a VJP reads (`needs`: "g", "in<i>", "out", "aux<j>") and which of those it
may overwrite, and the forward's cost in flops (for choosing what to recompute).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..channels import channel_sum
from ..parallel import matmul as gemm

__all__ = ["ALIAS", "KERNELS", "Meta", "Spec", "Vjp", "register_kernel"]

Shape = tuple[int, ...]
Fn = Callable[[], None]
ALIAS = "alias"  # a VJP whose result is the upstream gradient itself (same shape)
_SUM, _MAX = np.add.reduce, np.maximum.reduce  # what np.sum / np.max call, minus a wrapper


@dataclass
class Meta:
    """What a kernel may specialise on: input/output shapes and dtypes, the op's params."""

    in_shapes: tuple[Shape, ...]
    in_dtypes: tuple[np.dtype, ...]
    out_shape: Shape
    out_dtype: np.dtype
    params: dict[str, Any]


@dataclass
class Vjp:
    """One input's VJP: reads `needs`, writes one output of the input's shape."""

    needs: tuple[str, ...]
    build: Callable[[list[np.ndarray], np.ndarray, list[np.ndarray]], Fn]
    scratch: list[tuple[Shape, Any]] = field(default_factory=list)
    inplace: tuple[int, ...] = ()  # indices into `needs` whose buffer the output may take


class Spec:
    """Base spec: an elementwise-cost forward with no aux outputs and no scratch."""

    fwd_inplace: tuple[int, ...] = ()

    def aux(self, m: Meta) -> list[tuple[Shape, Any]]:
        """Extra buffers the forward fills for the VJPs (kept alive like saved values)."""
        return []

    def fwd_scratch(self, m: Meta) -> list[tuple[Shape, Any]]:
        """Temporaries the forward needs while it runs."""
        return []

    def fwd(self, m: Meta, ins: list[np.ndarray], outs: list[np.ndarray],
            scr: list[np.ndarray]) -> Fn:
        raise NotImplementedError

    def vjp(self, m: Meta, i: int) -> Vjp | str | None:
        """The VJP for input i, ALIAS for a pass-through, None if not differentiable."""
        return None

    def cost(self, m: Meta) -> float:
        return float(math.prod(m.out_shape))


KERNELS: dict[str, Spec] = {}


def register_kernel(name: str, spec: Spec) -> None:
    """Give primitive `name` a planned kernel (layers added later can opt in)."""
    KERNELS[name] = spec


def _seq(*fns: Fn) -> Fn:
    if len(fns) == 1:
        return fns[0]

    def run() -> None:
        for f in fns:
            f()

    return run


# -- unbroadcast: the same reduction as ops.unbroadcast, into a given buffer ---------------
def _unb_axes(gshape: Shape, shape: Shape) -> tuple[tuple[int, ...], Shape]:
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and gshape[i + lead] != 1)
    kd = tuple(1 if i in axes else n for i, n in enumerate(gshape))
    return axes, kd


def _sum_into(src: np.ndarray, out: np.ndarray, gshape: Shape, shape: Shape) -> Fn:
    axes, kd = _unb_axes(gshape, shape)
    return partial(_SUM, src, axis=axes, keepdims=True, out=out.reshape(kd))


def _unbroadcast_vjp(m: Meta, i: int, negate: bool = False) -> Vjp | str:
    shape = m.in_shapes[i]
    if shape == m.out_shape and not negate:
        return ALIAS
    if shape == m.out_shape:
        return Vjp(("g",), lambda ins, o, s: partial(np.negative, ins[0], out=o), inplace=(0,))

    def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
        f = _sum_into(ins[0], o, m.out_shape, shape)
        return _seq(f, partial(np.negative, o, out=o)) if negate else f

    return Vjp(("g",), build)


def _prod_vjp(m: Meta, i: int) -> Vjp:
    """d(a*b)/d(in i) = unbroadcast(g * other): the product first, then the reduction."""
    other = f"in{1 - i}"
    shape = m.in_shapes[i]
    if shape == m.out_shape:
        return Vjp(("g", other), lambda ins, o, s: partial(np.multiply, ins[0], ins[1], out=o),
                   inplace=(0,))

    def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
        return _seq(partial(np.multiply, ins[0], ins[1], out=s[0]),
                    _sum_into(s[0], o, m.out_shape, shape))

    return Vjp(("g", other), build, scratch=[(m.out_shape, m.out_dtype)])


# -- linear algebra ------------------------------------------------------------------------
class MatmulSpec(Spec):
    def fwd(self, m, ins, outs, scr):
        return partial(gemm, ins[0], ins[1], out=outs[0])

    def vjp(self, m, i):
        if i == 0:
            return Vjp(("g", "in1"), lambda ins, o, s: partial(gemm, ins[0], ins[1].T, out=o))
        return Vjp(("in0", "g"), lambda ins, o, s: partial(gemm, ins[0].T, ins[1], out=o))

    def cost(self, m):
        (n, k), (_, p) = m.in_shapes[:2]
        return 2.0 * n * k * p


def _rows(a: np.ndarray) -> np.ndarray:
    """(..., k) as (rows, k): linear's input may have any leading axes."""
    return a if a.ndim == 2 else a.reshape(-1, a.shape[-1])


class LinearSpec(MatmulSpec):
    def fwd(self, m, ins, outs, scr):
        x, w, b = ins
        o = outs[0]
        x2, o2 = _rows(x), _rows(o)
        mm, add = gemm, np.add

        def run() -> None:
            mm(x2, w, out=o2)
            add(o, b, out=o)

        return run

    def vjp(self, m, i):
        if i == 0:
            return Vjp(("g", "in1"), lambda ins, o, s: partial(gemm, _rows(ins[0]), ins[1].T,
                                                                out=_rows(o)))
        if i == 1:
            return Vjp(("in0", "g"), lambda ins, o, s: partial(gemm, _rows(ins[0]).T,
                                                                _rows(ins[1]), out=o))
        return Vjp(("g",), lambda ins, o, s: partial(_column_sums, ins[0], o))

    def cost(self, m):
        return 2.0 * math.prod(m.out_shape) * m.in_shapes[1][0]


def _column_sums(g: np.ndarray, out: np.ndarray) -> None:
    """A bias gradient as eager's linear computes it (channel_sum: the same bits)."""
    out[...] = channel_sum(g)


# -- elementwise ---------------------------------------------------------------------------
class BinarySpec(Spec):
    def __init__(self, ufunc: np.ufunc, kind: str):
        self.ufunc, self.kind = ufunc, kind

    @property
    def fwd_inplace(self) -> tuple[int, ...]:  # type: ignore[override]
        return (0, 1)

    def fwd(self, m, ins, outs, scr):
        return partial(self.ufunc, ins[0], ins[1], out=outs[0])

    def vjp(self, m, i):
        if self.kind == "mul":
            return _prod_vjp(m, i)
        return _unbroadcast_vjp(m, i, negate=self.kind == "sub" and i == 1)


class NegSpec(Spec):
    fwd_inplace = (0,)

    def fwd(self, m, ins, outs, scr):
        return partial(np.negative, ins[0], out=outs[0])

    def vjp(self, m, i):
        return Vjp(("g",), lambda ins, o, s: partial(np.negative, ins[0], out=o), inplace=(0,))


def _relu_vjp(m: Meta) -> Vjp:
    def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
        g, ans = ins
        mask = s[0]
        gt, mul = np.greater, np.multiply

        def run() -> None:  # eager: np.multiply(g, ans > 0)
            gt(ans, 0, out=mask)
            mul(g, mask, out=o)

        return run

    return Vjp(("g", "out"), build, scratch=[(m.out_shape, np.bool_)], inplace=(0,))


class ReluSpec(Spec):
    fwd_inplace = (0,)

    def fwd(self, m, ins, outs, scr):
        return partial(np.maximum, ins[0], 0, out=outs[0])

    def vjp(self, m, i):
        return _relu_vjp(m)


class AddInplaceSpec(BinarySpec):
    """add_ as a function of (target, other): the planner decides whether it is in place."""

    def __init__(self) -> None:
        super().__init__(np.add, "add")


class MulInplaceSpec(Spec):
    fwd_inplace = (0,)

    def fwd(self, m, ins, outs, scr):
        return partial(np.multiply, ins[0], ins[1], out=outs[0])

    def vjp(self, m, i):  # d/d(other) reads the target's old value: the planner keeps it
        return _prod_vjp(m, i)


# -- reductions ----------------------------------------------------------------------------
class ReduceSpec(Spec):
    def __init__(self, fn: Callable[..., Any], mean: bool):
        self.fn, self.mean = fn, mean

    def fwd(self, m, ins, outs, scr):
        p = m.params
        return partial(self.fn, ins[0], axis=p["axis"], keepdims=p["keepdims"], out=outs[0])

    def cost(self, m):
        return float(math.prod(m.in_shapes[0]))

    def vjp(self, m, i):
        shape, p = m.in_shapes[0], m.params
        axis = p["axis"]
        expand = axis is not None and not p["keepdims"]
        count = max(math.prod(shape) // max(math.prod(m.out_shape), 1), 1)
        mean = self.mean

        def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
            g = ins[0]
            src = s[0] if mean else g
            view = np.expand_dims(src, axis) if expand else src
            bview = np.broadcast_to(view, shape)
            copy = partial(np.copyto, o, bview)
            return _seq(partial(np.divide, g, count, out=s[0]), copy) if mean else copy

        scratch = [(m.out_shape, m.out_dtype)] if mean else []
        return Vjp(("g",), build, scratch=scratch)


for _name, _spec in {
    "matmul": MatmulSpec(), "linear": LinearSpec(),
    "add": BinarySpec(np.add, "add"), "sub": BinarySpec(np.subtract, "sub"),
    "mul": BinarySpec(np.multiply, "mul"), "neg": NegSpec(), "relu": ReluSpec(),
    "relu_": ReluSpec(), "add_": AddInplaceSpec(), "mul_": MulInplaceSpec(),
    "sum": ReduceSpec(np.sum, False), "mean": ReduceSpec(np.mean, True),
}.items():
    register_kernel(_name, _spec)
