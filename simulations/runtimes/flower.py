"""Run a simulation on Flower's own simulation runtime (Ray actors execute the ClientApp).

This is how a simulation grows past one machine: point Ray at a cluster (``RAY_ADDRESS``) and
the same ServerApp and ClientApp run there. Telemetry and Ray usage stats are switched off.
"""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def run_on_flower(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    cpus_per_client: float = 1.0,
    verbose: bool = False,
) -> None:
    """Run ``server_app`` against ``num_nodes`` virtual SuperNodes on Flower's Ray backend."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "the flower runtime needs Flower's simulation runtime: pip install 'fedcore[sim]'"
        ) from exc
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR},
    }
    before = dict(os.environ)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_nodes,
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        restore_environment(before)


def restore_environment(before: dict[str, str]) -> None:
    """Undo what Ray wrote into this process's environment while it ran (``PYTHONPATH`` with
    this venv's site-packages, ``PYTHONBREAKPOINT``...): every program started afterwards would
    inherit it, and a fresh venv started with that ``PYTHONPATH`` sees this one's packages."""
    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
