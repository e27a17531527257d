"""The ClientApp a device loads stays light (DESIGN.md): no store, CuPy, Ray, CLI or server."""

import json
import socket
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
    assert not loaded & banned, loaded & banned


def test_a_device_waiting_for_a_run_holds_no_numpy_pydantic_or_secagg(tmp_path):
    """``fedcore-device`` checks its data file (numpy), its device class and its key before it
    joins, then waits: numpy, the data and the engine load with the first message (the check
    reads the file in a child), device classes need no pydantic, SecAgg+ loads with --identity
    only."""
    import numpy as np

    from deploy.certs import create_certificates
    from deploy.keys import generate_node_keys

    np.savez(tmp_path / "data.npz", x=np.zeros((4, 8), np.float32), y=np.arange(4))
    key, _, _ = generate_node_keys(tmp_path / "keys")
    ca = create_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from deploy.agent import main\n"
        f"argv = ['--superlink', {closed!r}, '--data', {str(tmp_path / 'data.npz')!r},\n"
        f"        '--device', 'rpi-zero-2w', '--key', {str(key)!r},\n"
        f"        '--root-certificates', {str(ca)!r}]\n"
        "exit_code = main(argv)  # every check passes but the SuperLink is not there\n"
        "from client_runtime.fleet.agent import Agent, Settings\n"
        "from client_runtime.fleet.proto import fleet_pb2\n"
        "from client_runtime.fleet.transport import FleetClient, NodeSigner, load_private_key\n"
        "from deploy.node import NodeLoader\n"
        "signer = NodeSigner(load_private_key(Path(argv[7])))\n"
        "client = FleetClient(argv[1], root_certificates=Path(argv[9]), signer=signer)\n"
        "agent = Agent(client, lambda: {}, {}, settings=Settings(), register=False)\n"
        "NodeLoader(); fleet_pb2.PullMessagesRequest().SerializeToString()\n"
        "print(json.dumps([exit_code, sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    exit_code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert exit_code == 2 and "cannot reach a SuperLink" in out.stderr, out.stderr
    unwanted = {"numpy", "pydantic", "pydantic_core", "fedcore.secagg", "client_runtime.handlers",
                "fedcore.engine", "device_profiles", "importlib.metadata", "httpx"}
    assert not unwanted & set(loaded), sorted(unwanted & set(loaded))
