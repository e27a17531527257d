"""The BLAS numpy already loads: thread control, and the one level-1 routine numpy lacks.

OpenBLAS splits any GEMM above a small size over all its threads. For the per-step products
of a recurrent layer ((batch, H) x (H, 4H), a fraction of a millisecond each) the hand-off
and the join cost more than the second thread saves, and on a loaded machine a thread that
is descheduled stalls every step. `serial_blas()` runs a block with one BLAS thread and
restores the previous count afterwards; big products outside it keep every thread.

It uses threadpoolctl when installed (a ctypes call per switch, microseconds) and is a no-op
without it, or when BLAS already runs one thread.

`axpby(a, x, b, y)` is y = a x + b y in ONE pass (cblas_?axpby). numpy has no fused
multiply-add, so a momentum update in ufuncs reads and writes its buffers four times; through
axpby it is two passes (an MLP's SGD step: 0.83 -> 0.46 ms with cold caches, the same bits).
It is bound by `fedcore.cblas` (scipy-openblas symbols only); elsewhere (Accelerate, a system
BLAS of unknown integer width) `axpby` returns False and callers use ufuncs.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fedcore.cblas import address, bind

__all__ = ["axpby", "serial_blas", "set_blas_threads"]

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


def _bind_axpby(char: str) -> Any:
    """cblas_saxpby ('f') or cblas_daxpby ('d') from numpy's BLAS with its argtypes, or None."""
    real = ctypes.c_float if char == "f" else ctypes.c_double
    letter = "s" if char == "f" else "d"
    void = ctypes.c_void_p
    return bind(_controllers(), f"{letter}axpby", int, real, void, int, real, void, int)


def axpby(a: float, x: np.ndarray, b: float, y: np.ndarray) -> bool:
    """y = a * x + b * y in place, in one pass; False (nothing done) when BLAS cannot do it:
    an unknown BLAS, or arrays that are not same-size contiguous float32/float64 vectors."""
    char = y.dtype.char
    if char not in "fd" or x.dtype.char != char or x.size != y.size or \
            not (x.flags.c_contiguous and y.flags.c_contiguous):
        return False
    key = "axpby_" + char
    fn = _state.get(key, False)
    if fn is False:
        fn = _state[key] = _bind_axpby(char)
    if fn is None:
        return False
    fn(y.size, a, address(x), 1, b, address(y), 1)
    return True
