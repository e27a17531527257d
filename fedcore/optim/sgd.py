"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

Same update as PyTorch's SGD (dampening 0): d = g + wd * p; b = m * b + d;
d = d + m * b (Nesterov) or d = b; p -= lr * d. Parameters and the momentum buffer are
updated in place by one engine op per slot, with both in its write set. The op walks the
vector in cache-sized chunks with one chunk-sized scratch (as Adam), so the update needs no
parameter-sized temporary: full fine-tuning holds weights, gradients and momentum, no more.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..engine import Tensor, Var, get_engine
from ..engine.blas import axpby
from ..engine.parallel import parallel_for
from .optimizer import Optimizer

__all__ = ["SGD", "sgd_update"]

CHUNK = 1 << 15  # elements per pass: 128 KiB of float32 scratch, cache-resident


def sgd_update(p: np.ndarray, g: np.ndarray, b: np.ndarray | None, s: np.ndarray, lr: float,
               m: float, wd: float, nesterov: bool) -> None:
    """One in-place SGD update of `p` (momentum buffer `b`, scratch `s` of p's shape).

    Shared by the eager step and the hybridized (planned) step, so both round identically.
    """
    d = g
    if wd:
        np.multiply(p, wd, out=s)
        s += g
        d = s
    if b is None:
        np.multiply(d, lr, out=s)
        p -= s
        return
    if not nesterov and axpby(1.0, d, m, b):  # b = m b + d, then p -= lr b: two passes
        axpby(-lr, b, 1.0, p)
        return
    b *= m
    b += d
    if nesterov:  # p -= lr * (d + m * b), in two passes through the scratch
        np.multiply(d, lr, out=s)
        p -= s
        np.multiply(b, lr * m, out=s)
    else:
        np.multiply(b, lr, out=s)
    p -= s


class SGD(Optimizer):
    """SGD(params, lr, momentum=0.0, nesterov=False, weight_decay=0.0)."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def step(self) -> None:
        """One in-place update of every parameter that has a gradient."""
        eng = get_engine()
        lr, m, wd, nesterov = self.lr, self.momentum, self.weight_decay, self.nesterov
        buf = self._state("momentum") if m else None
        writes_extra: tuple[Var, ...] = () if buf is None else (buf,)
        pool = eng.pool
        for pvar, gvar, off, k in self._slots():
            def update(pvar: Var = pvar, gvar: Var = gvar, off: int = off, k: int = k) -> None:
                p, g = pvar.data, gvar.data
                b = None if buf is None else buf.data[off:off + k]
                if not (p.flags.c_contiguous and g.flags.c_contiguous):
                    # a strided user array: one update in its own shape
                    s = pool.alloc(p.shape, p.dtype, what="SGD scratch")
                    sgd_update(p, g, None if b is None else b.reshape(p.shape), s, lr, m, wd,
                               nesterov)
                    return
                p, g = p.reshape(-1), g.reshape(-1)

                def slab(lo: int, hi: int) -> None:  # elementwise: any split rounds alike
                    s = pool.alloc((min(CHUNK, hi - lo),), p.dtype, what="SGD scratch")
                    for c0 in range(lo, hi, CHUNK):
                        c1 = min(c0 + CHUNK, hi)
                        sgd_update(p[c0:c1], g[c0:c1], None if b is None else b[c0:c1],
                                   s[:c1 - c0], lr, m, wd, nesterov)

                parallel_for(k, slab, k // 2)  # two light passes (axpby): split from ~1M

            eng.push(update, (gvar,), (pvar, *writes_extra), "sgd_step")
        self.step_count += 1
