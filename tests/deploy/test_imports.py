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


def test_the_lean_device_agent_imports_no_flower_and_no_server_parts():
    """What ``fedcore-device`` loads to join: no flwr (68 MB), nothing of a server's."""
    code = (
        "import importlib, json, sys\n"
        "for m in ['deploy.agent', 'client_runtime.fleet.agent', 'client_runtime.handlers',\n"
        "          'client_runtime.fleet.transport', 'deploy.node', 'deploy.probe',\n"
        "          'deploy.processes', 'deploy.check']:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    banned = {"flwr", "sqlalchemy", "alembic", "typer", "rich", "click", "ray", "matplotlib",
              "uvicorn", "fastapi", "cupy", "cli", "aggregator", "simulations", "grpc"}
    # httpx imports its optional command line (click, rich) where they are installed; a
    # device install has neither (the device environment's test checks that)
    banned -= imported_after("httpx") & {"click", "rich"}
    assert not loaded & banned, loaded & banned
