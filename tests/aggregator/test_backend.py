"""Backend selection: numpy by default here, CuPy only when asked or usable, never on devices."""

import os
import subprocess
import sys

import numpy as np
import pytest

from aggregator import backend as backend_module
from aggregator.backend import BackendUnavailable, select_backend


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


@pytest.mark.parametrize("device", ["cpu", "strict"])
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
