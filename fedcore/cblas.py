"""Level-1 BLAS routines numpy lacks, bound with ctypes from a BLAS the process has loaded.

Only an unambiguous binding is used: scipy-openblas's ``scipy_cblas_<routine>64_`` (64-bit
integers, what numpy's wheels ship) or ``scipy_cblas_<routine>`` (32-bit, SciPy's wheels);
elsewhere (Accelerate, a system BLAS of unknown integer width) there is none and callers use
their fallback. A ctypes call releases the GIL for the routine's duration (SciPy's f2py BLAS
wrappers hold it), so threads can run BLAS side by side. Used by the engine's optimizer step
(``fedcore.engine.blas.axpby``) and the server's fold (``aggregator.backend.cblas_saxpy``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from typing import Any


def bind(libraries: Iterable[Any], routine: str, *argtypes: Any) -> Any:
    """``routine`` (e.g. ``"saxpy"``) from the first of ``libraries`` (threadpoolctl library
    controllers) that exports it, with ``argtypes`` in which ``int`` stands for the library's
    integer; it returns nothing (``restype`` None). None when no library has it."""
    for library in libraries:
        try:
            lib = ctypes.CDLL(library.filepath)
        except OSError:
            continue
        for name, integer in (
            (f"scipy_cblas_{routine}64_", ctypes.c_int64),
            (f"scipy_cblas_{routine}", ctypes.c_int),
        ):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = None
                fn.argtypes = [integer if a is int else a for a in argtypes]
                return fn
    return None


def address(array: Any) -> int:
    """The address of a numpy array's first element (for a bound routine)."""
    return int(array.__array_interface__["data"][0])
