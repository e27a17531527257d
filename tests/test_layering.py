"""The house plan's import rules, checked in fresh interpreters (DESIGN.md: rooms and doors)."""

import json
import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "cupy", "matplotlib", "ray", "cli", "aggregator", "simulations", "numba",
         "llvmlite")  # fmt: skip


def imported_after(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "package",
    [
        "fedcore",
        "fedcore.engine",
        "fedcore.nn",
        "fedcore.optim",
        "fedcore.models",
        "device_profiles",
        "client_runtime.app",
        "client_runtime.trainer",
        "client_runtime.secagg",
    ],
)
def test_device_packages_stay_light(package):
    assert not imported_after([package]) & set(HEAVY)


def test_fedcore_core_does_not_need_flower():
    assert "flwr" not in imported_after(
        ["fedcore.engine", "fedcore.nn", "fedcore.optim", "fedcore.secagg", "client_runtime.secagg"]
    )


def test_aggregator_never_imports_the_client_runtime():
    assert "client_runtime" not in imported_after(["aggregator.rounds", "aggregator.store"])


def test_the_server_loads_numba_only_to_fold_a_large_model():
    """The fold's compiled kernel (``aggregator.fold_kernel``) costs numba's import (and, the
    first time on a machine, its compilation): paid by the first large fold, not by importing
    the round."""
    assert not imported_after(["aggregator.rounds", "aggregator.fold"]) & {"numba", "llvmlite"}


def test_an_unstored_simulation_imports_no_store_and_no_ray():
    """The in-process path (``benchmarks.simulate``'s fedcore run) pays for what it uses."""
    loaded = imported_after(["simulations.lifecycle", "simulations.scenario"])
    assert not loaded & {"sqlalchemy", "alembic", "ray", "matplotlib", "cupy"}


def test_the_settings_the_trainer_and_device_classes_need_no_pydantic():
    """A device install has no pydantic: the settings type and the device classes check
    themselves (fedcore.settings, device_profiles.profile)."""
    loaded = imported_after(
        ["fedcore", "fedcore.settings", "fedcore.protocol", "client_runtime.trainer",
         "client_runtime.device", "device_profiles", "device_profiles.catalog"]
    )
    assert "pydantic" not in loaded and "pydantic_core" not in loaded


def test_building_and_training_a_model_leaves_importlib_metadata_unloaded():
    """Entry points are looked up only for a name nothing registered: importlib.metadata (about
    3 MB of RSS with what it pulls in) stays out of a process that builds a built-in model."""
    code = (
        "import json, sys\n"
        "early = 'importlib.metadata' in sys.modules\n"
        "from fedcore.models import build_model\n"
        "from fedcore.engine import softmax_cross_entropy\n"
        "m = build_model('tiny_gpt', vocab_size=20, embed_dim=8, hidden=8, n_layers=1,\n"
        "                n_heads=2, n_kv_heads=1, lora={'rank': 2, 'base': 'int8'})\n"
        "softmax_cross_entropy(m([[1, 2, 3]]), [2, 3, 4]).backward()\n"
        "print(json.dumps([early, 'importlib.metadata' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    early, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    if early:
        pytest.skip("this interpreter loads importlib.metadata at startup (a .pth file)")
    assert not loaded
