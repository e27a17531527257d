"""Running primitives that have no planned kernel: their own forward and VJPs.

A fallback forward gets a `ReplayCtx` whose `alloc` hands back, in order, the planned buffers
for the allocations the forward made while it was traced, so its output and any buffers it
keeps for backward (a dropout mask, a cached im2col) live in the arena. Its VJPs run as in eager
mode, on the same ctx: a VJP with a store form (`defvjp_into`) writes straight into the planned
gradient buffer; any other's result, a fresh numpy array (the one per-step allocation a
fallback op still makes), is copied into it. A
fallback op is only recomputed when listed in `RECOMPUTABLE` (a pure function of its inputs);
any other (dropout draws random numbers) is run once per step and its outputs are kept.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..autograd import VJPS, VJPS_INTO, Ctx
from ..engine import get_engine
from .graph import FwdOp
from .kernels import Vjp

__all__ = ["RECOMPUTABLE", "ReplayCtx", "fallback_cost", "fallback_fwd", "fallback_vjp"]

#: primitives without a planned kernel whose forward is a pure function of its inputs and
#: params, so the planner may run it again in backward (never dropout: it draws randoms)
RECOMPUTABLE = {"conv2d", "max_pool2d", "avg_pool2d", "tanh", "sigmoid", "gelu", "softmax",
                "batch_moments", "batch_moments_centred", "batch_norm", "batch_norm_train",
                "batch_norm_relu",
                "layer_norm", "embedding", "attention", "rope",
                "rms_norm", "silu", "swiglu", "matmul_nt", "depthwise_conv2d",
                "global_avg_pool2d"}


def fallback_cost(m: Any) -> float:
    """Flops guess: 2 * outputs * reduction size when input 1 is a weight, else outputs."""
    out = math.prod(m.out_shape)
    if len(m.in_shapes) > 1 and len(m.in_shapes[1]) >= 2:
        return 2.0 * out * math.prod(m.in_shapes[1][:-1])
    return float(out)

Build = Callable[[list[np.ndarray], list[np.ndarray], list[np.ndarray]], Callable[[], None]]


class ReplayCtx(Ctx):
    """A Ctx whose allocations come from the plan (in trace order), not from the pool."""

    def __init__(self, op: FwdOp):
        super().__init__(get_engine().pool, op.params)
        self.shapes = op.meta.in_shapes
        self.bufs: list[np.ndarray] = []
        self.next = 0
        self.lock = threading.Lock()

    def alloc(self, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
        with self.lock:  # slabs on the intra-op threads allocate too (conv2d, max_pool2d):
            i = self.next  # two must never be handed the same planned buffer
            self.next = i + 1
        if i < len(self.bufs):
            b = self.bufs[i]
            if b.shape == tuple(shape) and (dtype is None or b.dtype == np.dtype(dtype)):
                return b
        return super().alloc(shape, dtype)  # the op changed its mind: a counted allocation


def _ctx(op: FwdOp) -> ReplayCtx:
    if op.state is None:
        op.state = ReplayCtx(op)
    return op.state


def fallback_fwd(op: FwdOp) -> tuple[Build, list, list[tuple[int, int]]]:
    """(build, scratch, in-place options) for running `op`'s own forward."""
    prim, params = op.prim, op.params

    def build(ins: list[np.ndarray], outs: list[np.ndarray], scr: list[np.ndarray]) -> Any:
        ctx = _ctx(op)
        aux = iter(outs[1:])
        bufs = [outs[0] if i == op.result_alloc else next(aux) for i in range(len(op.allocs))]
        fwd, out = prim.forward, outs[0]
        state = ctx.__dict__
        fresh = dict(state)  # each run starts from a clean ctx, as eager makes a new one
        fresh["bufs"] = bufs  # this instance's buffers (a recomputation has its own)

        if prim.inplace:
            x0, rest = ins[0], ins[1:]

            def run_inplace() -> None:
                state.clear()
                state.update(fresh)
                if out is not x0:
                    np.copyto(out, x0)
                fwd(ctx, out, *rest, **params)

            return run_inplace

        def run() -> None:
            state.clear()
            state.update(fresh)
            res = fwd(ctx, *ins, **params)
            if res is not out:
                np.copyto(out, res)

        return run

    m = op.meta
    same = m.in_shapes and m.in_shapes[0] == m.out_shape and m.in_dtypes[0] == m.out_dtype
    inplace = [(0, 0)] if prim.inplace and same and not op.side_effect else []
    return build, [], inplace


def fallback_vjp(op: FwdOp, i: int) -> Vjp | None:
    """The registered VJP of `op` for input `i`, run on the forward's ctx."""
    vjps = VJPS.get(op.name, ())
    f = vjps[i] if i < len(vjps) else None
    if f is None:
        return None
    stores = VJPS_INTO.get(op.name, ())
    store = stores[i] if i < len(stores) else None
    saves = op.prim.saves
    has_ans = op.prim.saves_output
    needs = ("g", *(f"in{k}" for k in saves), *(("out",) if has_ans else ()),
             *(f"aux{j}" for j in range(len(op.outs) - 1)))
    nargs = len(op.ins)

    def build(ins: list[np.ndarray], o: np.ndarray, scr: list[np.ndarray]) -> Any:
        ctx = _ctx(op)
        g = ins[0]
        args: list[np.ndarray | None] = [None] * nargs
        for k, a in zip(saves, ins[1:1 + len(saves)], strict=True):
            args[k] = a
        targs = tuple(args)
        ans = ins[1 + len(saves)] if has_ans else None

        if store is not None:
            def run_store() -> None:
                ctx.args = targs
                ctx.ans = ans
                store(ctx, g, o)

            return run_store

        def run() -> None:
            ctx.args = targs
            ctx.ans = ans
            np.copyto(o, f(ctx, g))

        return run

    return Vjp(needs, build)
