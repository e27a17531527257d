"""The ClientApp a device loads stays light (DESIGN.md): no store, CuPy, Ray, CLI or server."""

import json
import subprocess
import sys


def imported_after(module: str) -> set[str]:
    code = (
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_device_clientapp_imports_nothing_heavy():
    heavy = {"sqlalchemy", "alembic", "cupy", "ray", "matplotlib", "cli", "aggregator"}
    loaded = imported_after("deploy.clientapp")
    assert not loaded & (heavy | {"simulations"})  # vendored data sets load only when named
