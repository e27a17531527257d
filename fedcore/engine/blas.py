"""BLAS thread control for small matrix products.

OpenBLAS splits any GEMM above a small size over all its threads. For the per-step products
of a recurrent layer ((batch, H) x (H, 4H), a fraction of a millisecond each) the hand-off
and the join cost more than the second thread saves, and on a loaded machine a thread that
is descheduled stalls every step. `serial_blas()` runs a block with one BLAS thread and
restores the previous count afterwards; big products outside it keep every thread.

It uses threadpoolctl when installed (a ctypes call per switch, microseconds) and is a no-op
without it, or when BLAS already runs one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["serial_blas", "set_blas_threads"]

_lock = threading.Lock()
_state: dict[str, Any] = {}
_depth = [0]


def _controllers() -> list[Any]:
    ctl = _state.get("blas")
    if ctl is None:
        try:
            from threadpoolctl import ThreadpoolController

            ctl = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # not installed, or a BLAS it cannot drive: leave threads alone
            ctl = []
        _state["blas"] = ctl
    return ctl


def set_blas_threads(n: int) -> bool:
    """Set BLAS to `n` threads for good (and as what `serial_blas` restores); False when
    BLAS threads cannot be controlled here."""
    ctls = _controllers()
    if not ctls:
        return False
    with _lock:
        for c in ctls:
            c.set_num_threads(n)
        if _depth[0]:
            _state["prev"] = [n] * len(ctls)
    return True


@contextmanager
def serial_blas() -> Iterator[None]:
    """Run the block with one BLAS thread (nested and concurrent uses keep it at one)."""
    ctls = _controllers()
    if not ctls:
        yield
        return
    with _lock:
        if _depth[0] == 0:
            _state["prev"] = [c.get_num_threads() for c in ctls]
            for c, n in zip(ctls, _state["prev"], strict=True):
                if n != 1:
                    c.set_num_threads(1)
        _depth[0] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[0] -= 1
            if _depth[0] == 0:
                for c, n in zip(ctls, _state["prev"], strict=True):
                    if n != 1:
                        c.set_num_threads(n)
