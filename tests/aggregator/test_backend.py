"""Backend selection: numpy by default here, CuPy only when asked or usable, never on devices."""

import os
import subprocess
import sys

import numpy as np
import pytest

from aggregator import backend as backend_module
from aggregator.backend import BackendUnavailable, select_backend
from tests.aggregator.conftest import BACKENDS
from tests.requirements import missing
from tests.tolerances import assert_close_to_operands


def test_auto_is_numpy_without_a_gpu_and_env_overrides(monkeypatch):
    monkeypatch.setattr(backend_module, "gpu_available", lambda: False)
    assert select_backend().name == "numpy"
    assert select_backend("cpu").device == "cpu"
    monkeypatch.setenv(backend_module.DEVICE_ENV, "strict")
    assert select_backend().name == "array_api_strict"


def test_gpu_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend_module, "gpu_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="fedcore\\[gpu\\]"):
        select_backend("gpu")
    with pytest.raises(ValueError, match="auto, cpu, gpu"):
        select_backend("tpu")


@pytest.mark.parametrize("device", BACKENDS)
def test_axpy_is_in_place_for_any_layout(device):
    b = select_backend(device)
    acc = b.zeros(5)
    x = np.arange(10, dtype=np.float32)[::2]  # strided: the ufunc path
    b.axpy(acc, 2.0, b.asarray(np.ascontiguousarray(x)))
    b.axpy(acc, 1.0, b.asarray(x) if device == "cpu" else b.asarray(np.ascontiguousarray(x)))
    np.testing.assert_allclose(b.to_numpy(acc), 3 * x)


def test_devices_never_import_cupy_or_the_aggregator():
    code = (
        "import sys, client_runtime.app, fedcore.compression, client_runtime.compression;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('cupy', 'aggregator', 'scipy')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def _close(got: np.ndarray, acc0: np.ndarray, w: float, x: np.ndarray) -> None:
    """``got`` is ``acc0 + w x`` to within a few float32 ulps of the operands (kernels round
    or fuse the product differently; a cancelled sum has no relative precision to check)."""
    want = acc0.astype(np.float64) + w * x.astype(np.float64)
    assert_close_to_operands(got, want, np.abs(acc0) + abs(w) * np.abs(x), 4, np.float32)


def _bound_saxpy():
    """The saxpy bound by address; skips where SciPy's BLAS is not scipy-openblas (then
    SciPy's own wrapper folds), fails there under ``FEDCORE_REQUIRE_BLAS=1`` (CI)."""
    bound = backend_module.cblas_saxpy()
    if bound is None:  # pragma: no cover - not SciPy's wheel
        missing("SciPy's BLAS has no scipy-openblas saxpy here", "FEDCORE_REQUIRE_BLAS")
    return bound


@pytest.fixture
def saxpy_calls(monkeypatch):
    """A fresh CPU axpy whose BLAS ``saxpy`` (bound by address) records the BLAS threads it
    ran with."""
    from threadpoolctl import threadpool_info

    real, calls = _bound_saxpy(), []

    def spy(*args):
        calls.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real(*args)

    monkeypatch.setattr(backend_module, "cblas_saxpy", lambda: spy)
    return backend_module._numpy_axpy(), calls


@pytest.mark.parametrize("threads", [1, 2])
def test_large_vectors_go_through_blas_saxpy_on_the_threads_asked(saxpy_calls, threads):
    from threadpoolctl import threadpool_info

    axpy, calls = saxpy_calls
    rng = np.random.default_rng(3)
    n = 2 * backend_module.BLAS_MIN_SIZE + 3
    acc0, x = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    acc = acc0.copy()
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    axpy(acc, 0.37, x, threads)
    assert len(calls) == 1 and set(calls[0]) == {threads}  # SciPy's BLAS, on `threads` threads
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    _close(acc, acc0, 0.37, x)
    small = np.ones(backend_module.BLAS_MIN_SIZE - 1, np.float32)
    axpy(small, 2.0, small.copy())
    assert len(calls) == 1 and np.all(small == 3.0)  # below the size: numpy's ufuncs
    strided = np.repeat(x, 2)[::2]  # equals x, not contiguous: the ufunc fallback
    acc = acc0.copy()
    axpy(acc, -1.5, strided, threads)
    assert len(calls) == 1
    _close(acc, acc0, -1.5, x)


def test_fedcore_agg_threads_reaches_the_kernel(monkeypatch, saxpy_calls):
    axpy, calls = saxpy_calls
    monkeypatch.setattr(backend_module.os, "cpu_count", lambda: 4)  # the same on any machine
    monkeypatch.setenv(backend_module.THREADS_ENV, "2")
    b = select_backend("cpu")
    assert b.threads == 2
    b = backend_module.Backend(b.name, b.xp, axpy, b.threads)  # the spied kernel
    n = backend_module.BLAS_MIN_SIZE
    acc, x = np.zeros(n, np.float32), np.full(n, 0.5, np.float32)
    b.axpy(acc, 4.0, x)
    assert calls and set(calls[-1]) == {2} and np.all(acc == 2.0)
    monkeypatch.delenv(backend_module.THREADS_ENV)
    assert select_backend("cpu").threads == 1


def test_saxpy_by_address_gives_scipys_saxpy_bits():
    from scipy.linalg.blas import saxpy

    _bound_saxpy()
    rng = np.random.default_rng(5)
    n = backend_module.BLAS_MIN_SIZE * 2 + 5
    x, acc0 = rng.standard_normal((2, n), dtype=np.float32)
    for weight in (0.37, -1.5, 3e-7):
        ours, theirs = acc0.copy(), acc0.copy()
        backend_module.host_axpy(n, n)(ours, weight, x)
        saxpy(x, theirs, a=weight)
        assert np.array_equal(ours, theirs)
    with pytest.raises(ValueError, match="axpy of 5 onto"):  # never reads past the end
        backend_module.host_axpy(n, n)(acc0, 1.0, x[:5])


@pytest.mark.parametrize("value", ["", " ", "1", " 3 ", "4"])
def test_fedcore_agg_threads_takes_1_to_the_cpu_count(monkeypatch, value):
    monkeypatch.setattr(backend_module.os, "cpu_count", lambda: 4)
    monkeypatch.setenv(backend_module.THREADS_ENV, value)
    assert backend_module.agg_threads() == (int(value) if value.strip() else 1)


@pytest.mark.parametrize("value", ["two", "0", "-2", "2.0", "5", "1e3", "0x2"])
def test_a_malformed_fedcore_agg_threads_is_named_in_one_line(monkeypatch, value):
    monkeypatch.setattr(backend_module.os, "cpu_count", lambda: 4)
    monkeypatch.setenv(backend_module.THREADS_ENV, value)
    with pytest.raises(backend_module.SettingError) as error:
        select_backend("cpu")
    assert str(error.value) == (
        f"$FEDCORE_AGG_THREADS={value!r}: give a whole number of threads from 1 to 4 "
        "(this machine's CPUs), or leave it unset for 1"
    )
