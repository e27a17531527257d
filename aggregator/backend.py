"""The array backend the server averages on: numpy or CuPy through the Array API.

``select_backend("auto")`` picks CuPy when a GPU is usable and numpy otherwise; ``"cpu"`` and
``"gpu"`` force one (``$FEDCORE_DEVICE`` sets the default). Everything the rules and server
optimizers compute goes through ``backend.xp``, an Array API namespace: numpy itself (2.1+
implements the standard), CuPy through ``array-api-compat``, or ``array-api-strict`` in the
tests, which proves the code uses nothing CuPy lacks. CuPy is imported only when a GPU is
asked for or probed, never on a device.

The one hot loop, ``acc += w * x`` over each arriving update, has a native kernel per backend:
a BLAS ``saxpy`` on the CPU (one read of ``x``, no temporary; called through ctypes, which
releases the GIL for the server's fold threads), a fused elementwise kernel on
the GPU, and the plain Array API expression elsewhere. The CPU kernel runs on one thread
unless ``$FEDCORE_AGG_THREADS`` says more: OpenBLAS threads spin, so on a busy machine a
second thread costs far more than it brings (measured: 0.5 GB/s instead of 12), while on an
idle one two threads read about 1.7x faster than one. The same setting gives the validating
fold its threads (``aggregator.fold``: Python threads over one-thread BLAS, which wait
without spinning).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from fedcore.cblas import address, bind

DEVICE_ENV = "FEDCORE_DEVICE"
DEVICES = ("auto", "cpu", "gpu")


class BackendUnavailable(RuntimeError):
    """The requested device cannot be used here (e.g. ``gpu`` without CuPy or a GPU)."""


@dataclass
class Backend:
    """An Array API namespace plus the few host/device moves the server needs."""

    name: str  # numpy | cupy | array_api_strict
    xp: Any = field(repr=False)
    _axpy: Callable[..., None] | None = field(default=None, repr=False)
    threads: int = 1  # CPU threads of the fused multiply-add ($FEDCORE_AGG_THREADS)

    @property
    def device(self) -> str:
        """``gpu`` for CuPy, ``cpu`` otherwise."""
        return "gpu" if self.name == "cupy" else "cpu"

    def asarray(self, host: np.ndarray) -> Any:
        """Put a host array on the backend (zero-copy on numpy, one copy on a GPU)."""
        if self.name == "numpy":
            return host
        return self.xp.asarray(host)

    def to_numpy(self, array: Any) -> np.ndarray:
        """Bring a backend array back to the host as numpy."""
        if isinstance(array, np.ndarray):
            return array
        if self.name == "cupy":
            return array.get()
        return np.asarray(array)

    def zeros(self, size: int, dtype: Any = np.float32) -> Any:
        """A zeroed vector on the backend (float32 unless the model is float64)."""
        return self.xp.zeros(size, dtype=getattr(self.xp, np.dtype(dtype).name))

    def axpy(self, acc: Any, weight: float, x: Any) -> None:
        """``acc += weight * x`` in place, in ``acc``'s dtype."""
        if self._axpy is not None:
            self._axpy(acc, weight, x, self.threads)
        else:
            acc += self.xp.asarray(weight, dtype=acc.dtype) * x


BLAS_MIN_SIZE = 1 << 16  # below this, numpy's own ufuncs are as fast and need no SciPy


def numpy_axpy(acc: np.ndarray, weight: float, x: np.ndarray) -> None:
    """``acc += weight * x`` on host arrays, one thread (the numpy backend's kernel)."""
    _NUMPY_AXPY(acc, weight, x, 1)


def _ufunc_axpy(acc: np.ndarray, weight: float, x: np.ndarray, tmp: np.ndarray) -> None:
    """``acc += weight * x`` as two ufuncs (product rounded into ``tmp``, then the sum)."""
    np.multiply(x, acc.dtype.type(weight), out=tmp)
    np.add(acc, tmp, out=acc)


@cache
def _blas_pools() -> tuple[Any, ...] | None:
    """The BLAS libraries' thread controllers, once SciPy's BLAS is loaded (None without
    SciPy or threadpoolctl: the ufuncs then do the work).

    SciPy's BLAS and threadpoolctl (about 0.3 s to import) are loaded on the first vector of
    at least ``BLAS_MIN_SIZE`` elements, so a small model's run never pays for them.
    """
    try:
        import scipy.linalg.blas  # noqa: F401 - loads SciPy's BLAS, so its pool is seen
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - both come with the server's dependencies
        return None
    return tuple(lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")


@contextmanager
def blas_threads(threads: int, size: int = BLAS_MIN_SIZE) -> Iterator[None]:
    """Every BLAS pool (numpy's and SciPy's) at ``threads`` inside the block, for work on
    vectors of ``size`` elements (below ``BLAS_MIN_SIZE`` SciPy is not loaded for it)."""
    libs = (_blas_pools() or ()) if size >= BLAS_MIN_SIZE else ()
    before = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(libs, before, strict=True):
            lib.set_num_threads(n)


@cache
def cblas_saxpy() -> Any:
    """``saxpy(n, a, x_address, 1, y_address, 1)``, BLAS's ``y += a x`` bound by address
    (``fedcore.cblas``) from the BLAS SciPy loaded when it is scipy-openblas (the library of
    SciPy's own ``saxpy``, so the same bits), else None. Unlike SciPy's wrapper it releases
    the GIL while it runs; its threads follow ``blas_threads``."""
    pools = _blas_pools()
    if pools is None:  # pragma: no cover - both come with the server's dependencies
        return None
    void = ctypes.c_void_p
    return bind(pools, "saxpy", int, ctypes.c_float, void, int, void, int)


def host_axpy(size: int, block: int) -> Callable[[np.ndarray, float, np.ndarray], None]:
    """``axpy(acc, weight, x)`` for float32, C-contiguous blocks (at most ``block`` elements)
    of vectors of ``size`` elements: the kernel ``numpy_axpy`` applies to the whole vector
    (BLAS saxpy from ``BLAS_MIN_SIZE`` on, else a product then a sum), so folding block by
    block gives its bits exactly (both are elementwise). Call it inside ``blas_threads``."""
    if size >= BLAS_MIN_SIZE and _blas_pools() is not None:
        bound = cblas_saxpy()
        if bound is not None:

            def by_address(acc: np.ndarray, weight: float, x: np.ndarray) -> None:
                if x.size != acc.size:  # the routine would read past x's end
                    raise ValueError(f"axpy of {x.size} onto {acc.size} values")
                bound(x.size, weight, address(x), 1, address(acc), 1)

            return by_address
        from scipy.linalg.blas import saxpy  # pragma: no cover - another BLAS than SciPy's wheel

        def blas(acc: np.ndarray, weight: float, x: np.ndarray) -> None:  # pragma: no cover
            out = saxpy(x, acc, a=weight)
            if out is not acc and not np.shares_memory(out, acc):
                np.copyto(acc, out)

        return blas  # pragma: no cover
    tmp = np.empty(block, np.float32)
    return lambda acc, weight, x: _ufunc_axpy(acc, weight, x, tmp[: x.size])


def _numpy_axpy() -> Callable[..., None]:
    """BLAS saxpy on ``threads`` threads for large float32 vectors; numpy ufuncs for small
    ones (and for other dtypes or non-contiguous operands)."""
    scratch: dict[tuple[int, np.dtype], np.ndarray] = {}

    def ufunc_axpy(acc: np.ndarray, weight: float, x: np.ndarray) -> None:
        tmp = scratch.get((x.size, acc.dtype))
        if tmp is None:
            scratch.clear()
            tmp = scratch[x.size, acc.dtype] = np.empty(x.size, acc.dtype)
        _ufunc_axpy(acc, weight, x, tmp)

    def axpy(acc: np.ndarray, weight: float, x: np.ndarray, threads: int = 1) -> None:
        contiguous = x.flags.c_contiguous and acc.flags.c_contiguous
        float32 = x.dtype == np.float32 and acc.dtype == np.float32
        if x.size < BLAS_MIN_SIZE or not (float32 and contiguous) or _blas_pools() is None:
            ufunc_axpy(acc, weight, x)
            return
        with blas_threads(threads, x.size):
            host_axpy(x.size, x.size)(acc, weight, x)

    return axpy


def _cupy_axpy(cp: Any) -> Callable[..., None]:  # pragma: no cover - needs a GPU
    kernel = cp.ElementwiseKernel("T x, T w", "T acc", "acc += w * x", "fedcore_axpy")

    def axpy(acc: Any, weight: float, x: Any, threads: int = 1) -> None:
        kernel(x, acc.dtype.type(weight), acc)

    return axpy


@cache
def gpu_available() -> bool:
    """Whether CuPy imports and sees at least one usable GPU (never raises)."""
    try:
        import cupy  # noqa: F401 - lazily, only on the server

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # ImportError, CUDA driver errors, ...
        return False


def _numpy_namespace() -> Any:
    """numpy itself when it implements the Array API 2023.12 (numpy >= 2.1), else the
    ``array-api-compat`` wrapper (which costs ~0.25 s of imports: numpy.ma, f2py)."""
    if getattr(np, "__array_api_version__", "") >= "2023.12":
        return np
    import array_api_compat.numpy as xp  # pragma: no cover - numpy < 2.1

    return xp


def namespace_of(array: Any) -> Any:
    """The Array API namespace of ``array`` (numpy's own for numpy arrays when it can)."""
    if isinstance(array, np.ndarray | np.generic):
        return _numpy_namespace()
    from array_api_compat import array_namespace

    return array_namespace(array)


@cache
def _make(name: str) -> Backend:
    if name == "numpy":
        return Backend("numpy", _numpy_namespace(), _numpy_axpy())
    if name == "cupy":  # pragma: no cover - needs a GPU
        import array_api_compat.cupy as xp
        import cupy

        return Backend("cupy", xp, _cupy_axpy(cupy))
    if name == "array_api_strict":
        import array_api_strict as xp

        return Backend("array_api_strict", xp)
    raise ValueError(f"unknown backend {name!r}")


THREADS_ENV = "FEDCORE_AGG_THREADS"


class SettingError(ValueError):
    """An environment setting holds a value it cannot take (the message names it)."""


def agg_threads() -> int:
    """``$FEDCORE_AGG_THREADS``: the server's fold threads, a whole number from 1 to the
    machine's CPU count (unset or empty: 1); ``SettingError`` says what is wrong in one line."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    cpus = os.cpu_count() or 1
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if not 1 <= threads <= cpus:
        raise SettingError(
            f"${THREADS_ENV}={raw!r}: give a whole number of threads from 1 to {cpus} "
            "(this machine's CPUs), or leave it unset for 1"
        )
    return threads


def select_backend(device: str | None = None, threads: int | None = None) -> Backend:
    """The backend for ``device`` (auto | cpu | gpu; default ``$FEDCORE_DEVICE`` or auto)
    with ``threads`` fold threads (default ``agg_threads()``).

    ``gpu`` raises ``BackendUnavailable`` when CuPy or a GPU is missing; ``auto`` falls back
    to numpy. ``strict`` gives ``array-api-strict`` (for tests). A malformed
    ``$FEDCORE_AGG_THREADS`` raises ``SettingError``.
    """
    backend = _select(device)
    threads = threads or agg_threads()
    if threads != backend.threads:
        backend = Backend(backend.name, backend.xp, backend._axpy, threads)
    return backend


def _select(device: str | None) -> Backend:
    device = (device or os.environ.get(DEVICE_ENV) or "auto").lower()
    if device == "strict":
        return _make("array_api_strict")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if device == "cpu":
        return _make("numpy")
    if device == "gpu":
        if not gpu_available():
            raise BackendUnavailable(
                "device 'gpu' needs CuPy and a usable GPU: pip install 'fedcore[gpu]'"
            )
        return _make("cupy")
    return _make("cupy") if gpu_available() else _make("numpy")


_NUMPY_AXPY = _numpy_axpy()
