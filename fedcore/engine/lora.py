"""LoRA's product as one op: `x W + s (x A) B` over a frozen (float32 or int8) base W.

Written as separate ops, the low-rank term allocates a full (rows, out) temporary in the
forward, and the backward gives the input two full-size gradients (base and adapter) plus
their sum. Fused, the low-rank term is added into the output in small row blocks, the input
gradient `g W^T + (s g B^T) A^T` is built in one buffer, and what the op keeps is the (rows, r)
product `s x A` and, only while A is trained, the input x itself (A's gradient reads it;
B's reads `s x A`; the base is frozen, so no weight gradient ever reads x for it).
The int8 base is dequantized block by block (`fedcore.engine.quant`).
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float
from .ops import Operand, tensor
from .parallel import matmul as gemm
from .pool import MemoryPool
from .quant import _check as _check_int8
from .quant import product, product_t
from .tensor import Tensor

__all__ = ["LOWRANK_ELEMS", "lora_matmul"]

#: elements of the scratch block the low-rank term is computed in (256 KiB of float32)
LOWRANK_ELEMS = 1 << 16


def _add_lowrank(out: np.ndarray, left: np.ndarray, right: np.ndarray,
                 pool: MemoryPool) -> None:
    """out += left @ right (left (M, r), right (r, N)) a block of rows at a time."""
    m, n = out.shape
    rows = max(1, min(m, LOWRANK_ELEMS // max(n, 1)))
    part = pool.alloc((rows, n), out.dtype)
    for i0 in range(0, m, rows):
        i1 = min(m, i0 + rows)
        p = gemm(left[i0:i1], right, out=part[:i1 - i0])
        out[i0:i1] += p


def _check(x: np.ndarray, base_out: int, a: np.ndarray, b: np.ndarray) -> None:
    check_float("lora_matmul", "input", x)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != x.shape[1] or b.shape != (a.shape[1],
                                                                             base_out):
        raise ValueError(f"lora_matmul: input {x.shape}, A {a.shape} and B {b.shape} do not "
                         f"fit a ({x.shape[1]}, {base_out}) base")


def _lowrank_fwd(ctx: Ctx, x: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray,
                 scale: float) -> np.ndarray:
    xa = gemm(x, a)
    xa *= scale
    ctx.xa = xa  # B's gradient reads it (rows x rank: small)
    ctx.gb = None  # a replayed step (fedcore.engine.hybrid) reuses its ctx: nothing stale
    _add_lowrank(out, xa, b, ctx.pool)
    return out


def _fwd_f32(ctx: Ctx, x: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray,
             scale: float) -> np.ndarray:
    check_float("lora_matmul", "weight", w)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"lora_matmul: input {x.shape} and weight {w.shape} do not fit")
    _check(x, w.shape[1], a, b)
    out = gemm(x, w, out=ctx.alloc((x.shape[0], w.shape[1]), x.dtype))
    return _lowrank_fwd(ctx, x, out, a, b, scale)


def _fwd_int8(ctx: Ctx, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, a: np.ndarray,
              b: np.ndarray, scale: float) -> np.ndarray:
    _check_int8(x, codes, scales)
    _check(x, codes.shape[1], a, b)
    out = product(x, codes, scales, ctx.alloc((x.shape[0], codes.shape[1]), x.dtype),
                  ctx.pool)
    return _lowrank_fwd(ctx, x, out, a, b, scale)


def _gb(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    """s g B^T (rows x rank), shared by the input's and A's gradients."""
    gb = getattr(ctx, "gb", None)
    if gb is None:
        gb = ctx.gb = gemm(g, ctx.args[-1].T)
        gb *= ctx.params["scale"]
    return gb


def _vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    args = ctx.args
    dx = np.empty((g.shape[0], args[-2].shape[0]), g.dtype)
    if len(args) == 4:  # float32 base
        gemm(g, args[1].T, out=dx)
    else:
        product_t(g, args[1], args[2], dx, ctx.pool)
    _add_lowrank(dx, _gb(ctx, g), args[-2].T, ctx.pool)
    return dx


def _vjp_a(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return gemm(ctx.args[0].T, _gb(ctx, g))


def _vjp_b(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    return gemm(ctx.xa.T, g)


# saved inputs each VJP reads: x's the base and both adapters, A's x and B, B's none (ctx.xa)
lora_f32_p = Primitive("lora_matmul", _fwd_f32, saves=(0, 1, 2, 3),
                       reads=((1, 2, 3), (), (0, 3), ()))
defvjp(lora_f32_p, _vjp_x, None, _vjp_a, _vjp_b)
lora_int8_p = Primitive("lora_qmatmul", _fwd_int8, saves=(0, 1, 2, 3, 4),
                        reads=((1, 2, 3, 4), (), (), (0, 4), ()))
defvjp(lora_int8_p, _vjp_x, None, None, _vjp_a, _vjp_b)


def lora_matmul(x: Operand, base: Tensor, a: Operand, b: Operand, scale: float,
                scales: Operand | None = None) -> Tensor:
    """`x @ W + scale * (x @ a) @ b` for x (M, K), a (K, r), b (r, N) and a frozen base W
    (K, N): float32, or int8 codes with per-column `scales` (see the module docstring).
    Differentiable in x, a and b."""
    if scales is None:
        return apply(lora_f32_p, tensor(x), base, tensor(a), tensor(b), scale=float(scale))
    return apply(lora_int8_p, tensor(x), base, tensor(scales), tensor(a), tensor(b),
                 scale=float(scale))
