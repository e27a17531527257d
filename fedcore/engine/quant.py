"""int8 weights with per-output-channel scales, and the product that dequantizes them in blocks.

`quantize_int8(w)` maps a float (in, out) weight to int8 codes and one float32 scale per output
column (symmetric, max-abs / 127): a quarter of the bytes. `qmatmul(x, codes, scales)` is
`x @ (codes * scales)` without ever holding the float weight: the forward dequantizes
QBLOCK_ELEMS-sized column blocks into one small scratch buffer (cache-resident) and multiplies
each; the backward (the input gradient only: the base is frozen) does the same over row
blocks, so neither needs partial sums. The op saves no activation: its VJP reads only the
weights.

A frozen lookup table (an embedding, whose tied output head reads the same rows) is held the
other way round: `quantize_rows(table)` gives int8 codes of the same (vocab, dim) layout and one
scale per row, so `qembedding(ids, codes, scales)` dequantizes just the rows it looks up, and
the head's product reads the codes transposed (a (dim, vocab) weight with per-column scales:
`product` and `product_t` as they are, see `fedcore.engine.head`).
"""

from __future__ import annotations

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .checks import check_float
from .ops import Operand, tensor
from .parallel import matmul as gemm
from .pool import MemoryPool
from .tensor import Tensor
from .var import Var

__all__ = ["QBLOCK_ELEMS", "dequantize_int8", "int8_tensor", "qembedding", "qmatmul",
           "quantize_int8", "quantize_rows"]

#: dequantized float32 elements per block (64 KiB of scratch)
QBLOCK_ELEMS = 1 << 14


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes of w, float32 scale per column): w ~= codes * scales, |error| <= scale/2."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8: weight must be 2-D (in, out), got {w.shape}")
    peak = np.abs(w).max(axis=0)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / scales), -127, 127).astype(np.int8)
    return codes, scales


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes (rows, dim), float32 scale per row) of a 2-D table: `quantize_int8` of its
    transpose, the codes laid out as the table (a row lookup reads one contiguous row)."""
    table = np.asarray(table, np.float32)
    if table.ndim != 2:
        raise ValueError(f"quantize_rows: table must be 2-D (rows, dim), got {table.shape}")
    codes, scales = quantize_int8(table.T)
    return np.ascontiguousarray(codes.T), scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 weight the codes stand for (for export and tests, not for training)."""
    return codes.astype(np.float32) * scales


def int8_tensor(codes: np.ndarray, name: str = "") -> Tensor:
    """A constant Tensor holding int8 codes as they are (Tensor() would widen them)."""
    if codes.dtype != np.int8:
        raise TypeError(f"int8_tensor: expected int8 codes, got {codes.dtype}")
    return Tensor._wrap(Var(codes, name))


def _check(x: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> None:
    check_float("qmatmul", "input", x)
    if x.ndim != 2 or codes.ndim != 2 or codes.dtype != np.int8:
        raise ValueError(f"qmatmul: input {x.shape} and int8 codes {codes.shape} "
                         f"{codes.dtype} must be 2-D (codes int8)")
    if x.shape[1] != codes.shape[0] or scales.shape != (codes.shape[1],):
        raise ValueError(f"qmatmul: input {x.shape}, codes {codes.shape} and scales "
                         f"{scales.shape} do not fit together")


def product(x: np.ndarray, codes: np.ndarray, scales: np.ndarray, out: np.ndarray,
            pool: MemoryPool) -> np.ndarray:
    """`x @ (codes * scales)` into `out`, dequantizing column blocks into pooled scratch."""
    (m, k), n = x.shape, codes.shape[1]
    cols = max(1, min(n, QBLOCK_ELEMS // k))
    w = pool.alloc((k, cols), x.dtype)
    part = pool.alloc((m, cols), x.dtype) if cols < n else None
    for j0 in range(0, n, cols):
        j1 = min(n, j0 + cols)
        wb = w[:, :j1 - j0]
        np.multiply(codes[:, j0:j1], scales[j0:j1], out=wb)
        if part is None:
            gemm(x, wb, out=out)
        else:
            out[:, j0:j1] = gemm(x, wb, out=part[:, :j1 - j0])
    return out


def product_t(g: np.ndarray, codes: np.ndarray, scales: np.ndarray, out: np.ndarray,
              pool: MemoryPool) -> np.ndarray:
    """`g @ (codes * scales).T` into `out` (an input gradient), over row blocks of codes."""
    (k, n), m = codes.shape, g.shape[0]
    rows = max(1, min(k, QBLOCK_ELEMS // n))
    w = pool.alloc((rows, n), g.dtype)
    part = pool.alloc((m, rows), g.dtype) if rows < k else None
    for i0 in range(0, k, rows):
        i1 = min(k, i0 + rows)
        wb = w[:i1 - i0]
        np.multiply(codes[i0:i1], scales, out=wb)
        if part is None:
            gemm(g, wb.T, out=out)
        else:
            out[:, i0:i1] = gemm(g, wb.T, out=part[:, :i1 - i0])
    return out


def _qmatmul_fwd(ctx: Ctx, x: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    _check(x, codes, scales)
    return product(x, codes, scales, ctx.alloc((x.shape[0], codes.shape[1]), x.dtype),
                   ctx.pool)


def _qmatmul_vjp_x(ctx: Ctx, g: np.ndarray) -> np.ndarray:
    codes, scales = ctx.args[1], ctx.args[2]
    return product_t(g, codes, scales, np.empty((g.shape[0], codes.shape[0]), g.dtype),
                     ctx.pool)


qmatmul_p = Primitive("qmatmul", _qmatmul_fwd, saves=(1, 2))
defvjp(qmatmul_p, _qmatmul_vjp_x, None, None)


def qmatmul(x: Operand, codes: Tensor, scales: Operand) -> Tensor:
    """`x @ (codes * scales)` for x (M, K), int8 codes (K, N), scales (N,), dequantized block
    by block (see the module docstring); differentiable in x only."""
    return apply(qmatmul_p, tensor(x), codes, tensor(scales))


def _qembedding_fwd(ctx: Ctx, ids: np.ndarray, codes: np.ndarray,
                    scales: np.ndarray) -> np.ndarray:
    if ids.dtype.kind not in "iu":
        raise TypeError(f"qembedding: indices {ids.shape} must be integers, got {ids.dtype}")
    if codes.ndim != 2 or codes.dtype != np.int8 or scales.shape != (codes.shape[0],):
        raise ValueError(f"qembedding: int8 codes {codes.shape} {codes.dtype} need one scale "
                         f"per row, got scales {scales.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= codes.shape[0]):
        raise IndexError(f"qembedding: indices {ids.shape} must lie in [0, {codes.shape[0]}), "
                         f"got range [{ids.min()}, {ids.max()}]")
    out = ctx.alloc((*ids.shape, codes.shape[1]), scales.dtype)
    np.multiply(np.take(codes, ids, axis=0), np.take(scales, ids)[..., None], out=out)
    return out


qembedding_p = Primitive("qembedding", _qembedding_fwd)
defvjp(qembedding_p, None, None, None)


def qembedding(ids: Operand, codes: Tensor, scales: Operand) -> Tensor:
    """Rows `ids` of the table int8 `codes` (rows, dim) * per-row `scales` stand for, each
    dequantized as it is looked up (`quantize_rows`); a frozen table: no gradient."""
    return apply(qembedding_p, tensor(ids), codes, tensor(scales))
