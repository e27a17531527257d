"""What an imported graph costs, for the simulated clock (`client_runtime.cost`).

The engine has no FLOP counter and an imported model has no layer objects to walk, so one
example goes through the graph once (`OnnxModel.layers`) and each layer is counted from its
output shape and the parameters it reads: a convolution 2 x params per output position, a
dense product or a recurrent layer 2 x params per row or step, an activation-by-activation
product (attention) 2 x its output times its last axis, anything else one FLOP per output
element. The family (transformer, rnn, cnn, mlp) follows the same rules as the built-in
models'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...engine import no_grad

__all__ = ["forward_flops", "model_family"]

_CACHE_KEY = "_flops_cache"


def _example(model: Any, shape: Sequence[int]) -> np.ndarray:
    dtype = np.int64 if model.spec.inputs[0].dtype.startswith("int") else np.float32
    return np.zeros((1, *(int(n) for n in shape)), dtype)


def forward_flops(model: Any, shape: Sequence[int]) -> tuple[float, tuple[int, ...]]:
    """FLOPs of one forward pass of one example of `shape`, and the output's shape (no batch
    axis)."""
    cache = model.__dict__.setdefault(_CACHE_KEY, {})
    key = tuple(int(n) for n in shape)
    if key not in cache:
        was = model.training
        model.eval()
        try:
            with no_grad():
                rows = model.layers(_example(model, key))
                out = model(_example(model, key))
        finally:
            model.train(was)
        total = 0.0
        for _, op, shapes, params in rows:
            size = float(sum(math.prod(s) for s in shapes))
            first = shapes[0] if shapes else ()
            if op == "Conv" and len(first) == 4:
                total += 2.0 * params * first[2] * first[3]
            elif op in ("Gemm", "MatMul", "LSTM", "GRU") and params and len(first) >= 2:
                total += 2.0 * params * math.prod(first[:-1])
            elif op == "MatMul" and first:
                total += 2.0 * size * first[-1]
            else:
                total += size
        out = out[0] if isinstance(out, tuple) else out
        cache[key] = (total, tuple(out.shape[1:]))
    return cache[key]


def model_family(model: Any) -> str:
    """transformer (a Softmax over an activation product), rnn, cnn or mlp."""
    ops = [n.op for n in model.nodes]
    products = [n for n in model.nodes if n.op == "MatMul"
                and not any(i in model._params for i in n.inputs)]
    if products and "Softmax" in ops:
        return "transformer"
    if "LSTM" in ops or "GRU" in ops:
        return "rnn"
    if "Conv" in ops:
        return "cnn"
    return "mlp"
