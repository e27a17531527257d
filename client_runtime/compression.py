"""The client side of update compression: encode the delta, keep the error for next time.

Error feedback (Seide et al., 2014; Karimireddy et al., 2019): what compression dropped this
round (``corrected - decode(encode(corrected))``) is added to next round's delta, so nothing
is lost for good. The residual lives in the node's ``context.state`` (it survives between
rounds on a SuperNode and in both simulation backends).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedcore import compression, protocol
from fedcore.records import kit_of

RESIDUAL = "fedcore.error_feedback"


def _residual(state: Any, size: int) -> np.ndarray:
    stored = protocol.record(state, RESIDUAL, kit_of(state).ArrayRecord)
    if stored is not None:
        residual = stored["residual"].numpy()
        if residual.shape == (size,) and residual.dtype == np.float32:
            return residual
    return np.zeros(size, np.float32)


def compress_update(
    local: np.ndarray,
    global_vector: np.ndarray,
    codec: str,
    options: dict[str, Any],
    state: Any,
    seed: int,
) -> tuple[Any, Any]:
    """Encode ``local - global`` (+ carried error) with ``codec``; update the residual.
    ``state`` is the node's RecordDict (Flower's or lean): the records made are of its kind."""
    kit = kit_of(state)
    corrected = (local - global_vector).astype(np.float32) + _residual(state, local.size)
    rng = np.random.default_rng(seed)
    payload = compression.encode(codec, corrected, rng, **options)
    decoded = compression.decode(codec, payload, local.size, **options)
    if isinstance(decoded, tuple):
        idx, vals = decoded
        corrected[idx] -= vals
        residual = corrected
    else:
        residual = corrected - decoded
    state[RESIDUAL] = kit.ArrayRecord({"residual": kit.Array(residual.astype(np.float32))})
    record = kit.ArrayRecord(
        {key: kit.Array(np.ascontiguousarray(v)) for key, v in payload.items()})
    return record, kit.ConfigRecord({"name": codec, **options})
