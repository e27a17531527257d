"""Adam and AdamW, updating parameters and both moment buffers in place.

Same update as PyTorch's Adam: with d = g (+ wd * p for L2 decay),
m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2 and p -= lr * m_hat / (sqrt(v_hat) + eps).
`decoupled=True` (AdamW) decays the weights directly instead: p *= 1 - lr * wd.

One engine op per slot (one for a flat model) with the parameters, both moments and the
step counter in its write set. The op walks the flat vector in cache-sized chunks with two
chunk-sized scratch buffers, so the update needs no parameter-sized temporaries. The step
counter and the learning rate are read when the op runs, not when it is pushed, so a traced
and replayed step keeps counting and follows learning-rate changes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..engine import Tensor, Var, get_engine
from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]

CHUNK = 1 << 15  # elements per pass: 128 KiB of float32, so each chunk stays in cache


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled=False)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, lr)
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decoupled = bool(decoupled)
        self._counter = Var(np.zeros(1, np.int64), f"{type(self).__name__}.step")
        self._scratch: Var | None = None

    @property
    def state_step(self) -> int:
        """Updates applied so far (Adam's t, which drives the bias corrections)."""
        get_engine().wait_for_var(self._counter)
        return int(self._counter.data[0])

    def step(self) -> None:
        """One in-place update of every parameter that has a gradient."""
        eng = get_engine()
        m_var, v_var = self._state("exp_avg"), self._state("exp_avg_sq")
        if self._scratch is None:
            size = min(CHUNK, self._numel)
            self._scratch = Var(eng.pool.alloc((2, size), what="Adam scratch"), "Adam.scratch")
        scratch, counter = self._scratch, self._counter
        for k, (pvar, gvar, off, size) in enumerate(self._slots()):
            def update(pvar: Var = pvar, gvar: Var = gvar, off: int = off, size: int = size,
                       first: bool = k == 0) -> None:
                if first:
                    counter.data[0] += 1
                p, g = pvar.data.reshape(-1), gvar.data.reshape(-1)
                m = m_var.data[off:off + size]
                v = v_var.data[off:off + size]
                for lo in range(0, size, CHUNK):
                    hi = min(lo + CHUNK, size)
                    self._update_chunk(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi],
                                       scratch.data[:, :hi - lo], int(counter.data[0]))

            eng.push(update, (gvar,), (pvar, m_var, v_var, scratch, counter), "adam_step")
        self.step_count += 1

    def _update_chunk(self, p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray,
                      scratch: np.ndarray, t: int) -> None:
        lr, (b1, b2), eps, wd = self.lr, self.betas, self.eps, self.weight_decay
        s1, s2 = scratch[0], scratch[1]
        d = g
        if wd and not self.decoupled:
            np.multiply(p, wd, out=s1)
            s1 += g
            d = s1
        elif wd:
            p *= 1.0 - lr * wd
        m *= b1
        np.multiply(d, 1.0 - b1, out=s2)
        m += s2
        v *= b2
        np.multiply(d, d, out=s2)
        s2 *= 1.0 - b2
        v += s2
        np.sqrt(v, out=s2)  # sqrt(v_hat) + eps = sqrt(v) / sqrt(1 - b2^t) + eps
        s2 *= 1.0 / np.sqrt(1.0 - b2 ** t)
        s2 += eps
        np.divide(m, s2, out=s1)
        s1 *= lr / (1.0 - b1 ** t)
        p -= s1


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled=True)
