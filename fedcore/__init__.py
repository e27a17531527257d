"""fedcore: the shared core of the federated-learning platform (engine, nn, optim, models).

Subpackages are imported on demand so light users (e.g. secure aggregation) stay light.
``fedcore.simulate(...)`` runs a scenario from Python (``simulations.api``; imported on first
use, so a device importing ``fedcore`` never loads the simulation stack).
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "simulate"]


def __getattr__(name: str) -> Any:
    if name in ("simulate", "SimulationRun"):
        from simulations import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedcore' has no attribute {name!r}")
