"""Planned kernels for the loss primitives: log_softmax, fused softmax cross-entropy, MSE.

Same numpy calls as `fedcore.engine.losses`, into given buffers (see `kernels`).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from ..losses import _check_labels
from .kernels import _MAX, _SUM, Fn, Shape, Spec, Vjp, _seq, register_kernel

__all__ = ["LogSoftmaxSpec", "MseSpec", "XentSpec"]


class LogSoftmaxSpec(Spec):
    def fwd_scratch(self, m):
        kd = _keep(m.in_shapes[0], m.params["axis"])
        return [(kd, m.out_dtype), (m.out_shape, m.out_dtype), (kd, m.out_dtype)]

    def fwd(self, m, ins, outs, scr):
        x, out = ins[0], outs[0]
        mx, ex, lse = scr
        axis = m.params["axis"]

        def run() -> None:
            _MAX(x, axis=axis, keepdims=True, out=mx)
            np.subtract(x, mx, out=out)
            np.exp(out, out=ex)
            _SUM(ex, axis=axis, keepdims=True, out=lse)
            np.log(lse, out=lse)
            np.subtract(out, lse, out=out)

        return run

    def vjp(self, m, i):
        kd = _keep(m.out_shape, m.params["axis"])
        axis = m.params["axis"]

        def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
            g, ans = ins
            ex, gs = s

            def run() -> None:  # eager: g - np.exp(ans) * g.sum(axis, keepdims=True)
                _SUM(g, axis=axis, keepdims=True, out=gs)
                np.exp(ans, out=ex)
                np.multiply(ex, gs, out=ex)
                np.subtract(g, ex, out=o)

            return run

        return Vjp(("g", "out"), build, scratch=[(m.out_shape, m.out_dtype),
                                                  (kd, m.out_dtype)], inplace=(0,))


def _keep(shape: Shape, axis: int) -> Shape:
    ax = axis % len(shape)
    return tuple(1 if i == ax else n for i, n in enumerate(shape))


class XentSpec(Spec):
    """Fused softmax cross-entropy: keeps the probabilities (aux0) and turns them into the
    gradient in place, as the eager op does."""

    def aux(self, m):
        return [(m.in_shapes[0], m.out_dtype)]

    def fwd_scratch(self, m):
        n = m.in_shapes[0][0]
        f = m.out_dtype
        return [((n, 1), f), ((n,), np.int64), ((n,), f), ((n, 1), f)]

    def fwd(self, m, ins, outs, scr):
        logits, labels = ins
        out, probs = outs
        norm, idx, picked, lognorm = scr
        n, c = logits.shape
        rows_c = np.arange(n, dtype=np.int64) * c
        flat = probs.reshape(-1)

        def run() -> None:
            _check_labels(logits, labels)
            _MAX(logits, axis=1, keepdims=True, out=norm)
            np.subtract(logits, norm, out=probs)
            np.add(rows_c, labels, out=idx)
            np.take(flat, idx, out=picked)
            pk = _SUM(picked, dtype=np.float64)
            np.exp(probs, out=probs)
            _SUM(probs, axis=1, keepdims=True, out=norm)
            np.divide(probs, norm, out=probs)
            np.log(norm, out=lognorm)
            out[...] = (_SUM(lognorm, axis=None, dtype=np.float64) - pk) / max(n, 1)

        return run

    def cost(self, m):
        return 8.0 * math.prod(m.in_shapes[0])

    def vjp(self, m, i):
        if i != 0:
            return None
        n = m.in_shapes[0][0]

        def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
            g, probs, labels = ins
            idx, picked, scale = s
            c = o.shape[1]
            rows_c = np.arange(n, dtype=np.int64) * c
            flat = o.reshape(-1)

            def run() -> None:  # eager: probs[rows, labels] -= 1; probs *= g / n
                if o is not probs:
                    np.copyto(o, probs)
                np.add(rows_c, labels, out=idx)
                np.take(flat, idx, out=picked)
                np.subtract(picked, 1.0, out=picked)
                np.put(flat, idx, picked)
                np.divide(g, max(n, 1), out=scale)
                np.multiply(o, scale, out=o)

            return run

        return Vjp(("g", "aux0", "in1"), build,
                   scratch=[((n,), np.int64), ((n,), m.out_dtype), ((), m.out_dtype)],
                   inplace=(1,))


class MseSpec(Spec):
    def fwd_scratch(self, m):
        return [(m.in_shapes[0], m.out_dtype)]

    def fwd(self, m, ins, outs, scr):
        pred, target = ins
        out, d = outs[0], scr[0]
        size = max(d.size, 1)
        flat = d.reshape(-1)

        def run() -> None:
            if pred.shape != target.shape:
                raise ValueError(f"mse: pred shape {pred.shape} != target shape {target.shape}")
            np.subtract(pred, target, out=d)
            out[...] = np.dot(flat, flat) / size

        return run

    def vjp(self, m, i):
        size = max(math.prod(m.in_shapes[0]), 1)

        def build(ins: list[np.ndarray], o: np.ndarray, s: list[np.ndarray]) -> Fn:
            g, pred, target = ins
            sc = s[0]
            steps = [partial(np.subtract, pred, target, out=o),
                     partial(np.multiply, g, 2.0 / size, out=sc),
                     partial(np.multiply, o, sc, out=o)]
            if i == 1:
                steps.append(partial(np.negative, o, out=o))
            return _seq(*steps)

        return Vjp(("g", "in0", "in1"), build, scratch=[((), m.out_dtype)])


register_kernel("log_softmax", LogSoftmaxSpec())
register_kernel("softmax_cross_entropy", XentSpec())
register_kernel("mse", MseSpec())
