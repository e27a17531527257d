"""Update compression on the wire: stochastic 8/4-bit quantization and top-k sparsification.

A client compresses its *delta* (``local - global``, plus the error it carried over from
earlier rounds: error feedback, see ``client_runtime.compression``); the server decodes it
and adds the global model back. Pure numpy, so a device can run it.

- ``int8`` / ``int4``: per block of ``block`` values, ``lo`` and ``step = (hi - lo) / levels``;
  each value becomes ``floor((x - lo) / step + u)`` with ``u ~ U[0, 1)`` (unbiased), stored
  as ``uint8`` (two 4-bit codes per byte for ``int4``).
- ``topk``: the ``ratio`` largest-magnitude entries as ``uint32`` indices and ``float32``
  values; the rest is left to error feedback.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CODECS: dict[str, dict[str, Any]] = {
    "none": {},
    "int8": {"block": 1024},
    "int4": {"block": 1024},
    "topk": {"ratio": 0.01},
}
_LEVELS = {"int8": 255, "int4": 15}


def codec_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``options`` checked against codec ``name`` and completed with its defaults."""
    if name not in CODECS:
        raise ValueError(f"unknown compression {name!r} (known: {', '.join(CODECS)})")
    options = dict(options or {})
    unknown = sorted(set(options) - set(CODECS[name]))
    if unknown:
        allowed = ", ".join(CODECS[name]) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {name!r} (allowed: {allowed})")
    merged = {**CODECS[name], **options}
    if "block" in merged and (not isinstance(merged["block"], int) or merged["block"] < 2):
        raise ValueError(f"block must be an integer >= 2, got {merged['block']!r}")
    if "ratio" in merged and not (
        isinstance(merged["ratio"], int | float) and 0 < merged["ratio"] <= 1
    ):
        raise ValueError(f"ratio must be in (0, 1], got {merged['ratio']!r}")
    return merged


def encode(
    name: str, delta: np.ndarray, rng: np.random.Generator, **options: Any
) -> dict[str, np.ndarray]:
    """Compress a float32 delta; return the arrays to put on the wire."""
    options = codec_options(name, options)
    delta = np.ascontiguousarray(delta, dtype=np.float32)
    if name == "topk":
        k = max(1, min(delta.size, round(options["ratio"] * delta.size)))
        idx = np.argpartition(np.abs(delta), delta.size - k)[delta.size - k :]
        idx.sort()
        return {"idx": idx.astype(np.uint32), "val": delta[idx]}
    if name in _LEVELS:
        return _quantize(delta, options["block"], _LEVELS[name], rng)
    raise ValueError(f"codec {name!r} does not encode")


def decode(
    name: str, arrays: dict[str, np.ndarray], size: int, **options: Any
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode``: a dense float32 delta, or ``(indices, values)`` for ``topk``.

    Raises ``ValueError`` for payloads that do not fit a model of ``size`` parameters.
    """
    options = codec_options(name, options)
    if name == "topk":
        idx, val = arrays["idx"], arrays["val"]
        if idx.ndim != 1 or idx.shape != val.shape or val.dtype != np.float32:
            raise ValueError("topk payload: idx and val must be 1-D of equal length, val float32")
        if idx.dtype.kind not in "ui":
            raise ValueError(f"topk payload: indices of dtype {idx.dtype}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise ValueError(f"topk payload: index out of range for {size} parameters")
        if np.unique(idx).size != idx.size:
            raise ValueError("topk payload: repeated indices")
        return idx.astype(np.intp), val
    if name in _LEVELS:
        return _dequantize(arrays, size, options["block"], _LEVELS[name])
    raise ValueError(f"codec {name!r} does not decode")


def _quantize(
    x: np.ndarray, block: int, levels: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    blocks = -(-x.size // block)
    padded = np.zeros(blocks * block, np.float32)
    padded[: x.size] = x
    if x.size < padded.size:  # pad with the last real value so blocks keep their range
        padded[x.size :] = x[-1] if x.size else 0.0
    rows = padded.reshape(blocks, block)
    lo = rows.min(axis=1)
    step = (rows.max(axis=1) - lo) / np.float32(levels)
    safe = np.where(step > 0, step, np.float32(1.0))
    scaled = (rows - lo[:, None]) / safe[:, None]
    codes = np.floor(scaled + rng.random(scaled.shape, dtype=np.float32))
    codes = np.clip(codes, 0, levels).astype(np.uint8).ravel()[: x.size]
    if levels == 15:
        if codes.size % 2:
            codes = np.append(codes, np.uint8(0))
        codes = codes[0::2] | (codes[1::2] << 4)
    return {"q": codes, "lo": lo.astype(np.float32), "step": step.astype(np.float32)}


def _dequantize(arrays: dict[str, np.ndarray], size: int, block: int, levels: int) -> np.ndarray:
    q, lo, step = arrays["q"], arrays["lo"], arrays["step"]
    blocks = -(-size // block)
    packed = -(-size // 2) if levels == 15 else size
    if q.dtype != np.uint8 or q.shape != (packed,):
        raise ValueError(
            f"quantized payload: expected {packed} uint8 codes, got {q.shape} {q.dtype}"
        )
    if lo.shape != (blocks,) or step.shape != (blocks,):
        raise ValueError(f"quantized payload: expected {blocks} blocks of {block}")
    if lo.dtype != np.float32 or step.dtype != np.float32:
        raise ValueError("quantized payload: lo and step must be float32")
    if levels == 15:
        codes = np.empty(2 * q.size, np.uint8)
        codes[0::2] = q & 0x0F
        codes[1::2] = q >> 4
        q = codes[:size]
    out = np.empty(blocks * block, np.float32)
    out[:size] = q
    rows = out.reshape(blocks, block)
    rows *= step[:, None]
    rows += lo[:, None]
    return out[:size]
