"""``fedcore.simulate(...)``: run a scenario from Python, as ``fedcore simulate`` does.

``scenario`` is a TOML path, a dict (the TOML's tables) or a validated `Scenario`. Code may
pass its own objects instead of naming them in the scenario: ``model=`` (a factory returning
a ``fedcore.nn.Module``), ``loader=`` (``(partition_id, num_partitions, seed) -> (x, y)``) and
``strategy=`` (a maker returning an ``aggregator.strategies.Strategy``). An object importable
by its module and name is stored as ``package.module:name`` (so ``fedcore runs resume`` can
rebuild it); any other object (a lambda, a closure) is registered under a generated name for
this run only. The run is stored like the CLI's (``db=None``: ``$FEDCORE_DB`` or
``./fedcore.db``; ``db=False``: not stored) and the result carries its history.
"""

from __future__ import annotations

import importlib
import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.rounds import RoundOutcome
from fedcore.resolve import Registry
from simulations.harness import SimulationResult
from simulations.reports import round_figures

__all__ = ["SimulationRun", "simulate"]

_SERIAL = itertools.count(1)


@dataclass
class SimulationRun:
    """What ``fedcore.simulate`` returns: the run id, the final model, the round history."""

    result: SimulationResult

    @property
    def run_id(self) -> int | None:
        """The stored run's id (None when not stored)."""
        return self.result.run_id

    @property
    def final_params(self) -> Any:
        """The final global model as one flat float32 vector (the parameters, then any
        BatchNorm statistics: `fedcore.nn.set_state` loads it)."""
        return self.result.final

    @property
    def rounds(self) -> list[RoundOutcome]:
        """Every round's full outcome (clients, metrics, federated evaluation)."""
        return self.result.rounds

    @property
    def history(self) -> list[dict[str, Any]]:
        """One plain dict per round: losses, the server's test figures, federated evaluation."""
        out = []
        for r in self.result.rounds:
            federated = None if r.evaluation is None else r.evaluation.summary
            out.append({**round_figures(r), "federated": federated})
        return out


def _reference(obj: Any, registry: Registry[Any], kind: str, made: list[Any]) -> str:
    """A name for ``obj`` in ``registry``: its import path when that finds ``obj`` again,
    else a generated name registered for this run (``made`` collects what to unregister)."""
    if isinstance(obj, str):
        return obj
    if not callable(obj):
        raise TypeError(f"{kind}= must be a callable or a name, got {type(obj).__name__}")
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module and module != "__main__" and name and "<" not in name:
        try:
            found: Any = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
            if found is obj:
                return f"{module}:{name}"
        except (ImportError, AttributeError):
            pass
    generated = f"api-{kind}-{next(_SERIAL)}"  # never reused: caches key on the name
    registry.register(generated, obj)
    made.append((registry, generated))
    return generated


def simulate(
    scenario: str | os.PathLike[str] | Mapping[str, Any] | Any,
    *,
    model: Callable[..., Any] | str | None = None,
    loader: Callable[..., Any] | str | None = None,
    strategy: Callable[..., Any] | str | None = None,
    runtime: str = "inprocess",
    db: str | bool | None = None,
    on_round: Callable[[RoundOutcome], None] | None = None,
    report: str | os.PathLike[str] | None = None,
    backend: str | None = None,
) -> SimulationRun:
    """Validate, prepare and run ``scenario`` on ``runtime`` (inprocess | flower);
    `ScenarioError` (one line) if it is invalid. ``backend`` is ``runtime``'s old name."""
    if backend is not None:
        import warnings

        warnings.warn("simulate(backend=...) is deprecated: use runtime=", DeprecationWarning,
                      stacklevel=2)
        runtime = backend
    made: list[Any] = []
    try:
        return _simulate(scenario, model, loader, strategy, runtime, db, on_round, report, made)
    finally:
        for registry, name in made:
            registry.unregister(name)


def _simulate(scenario: Any, model: Any, loader: Any, strategy: Any, runtime: str,
              db: str | bool | None, on_round: Any, report: Any, made: list[Any]
              ) -> SimulationRun:
    from aggregator.strategies import STRATEGIES
    from fedcore.models import MODELS
    from simulations.datasets import DATA_LOADERS
    from simulations.lifecycle import run_scenario
    from simulations.scenario import Scenario, load_scenario, scenario_from_dict

    if isinstance(scenario, Scenario):
        raw: dict[str, Any] = scenario.model_dump()
        source = scenario.name
    elif isinstance(scenario, Mapping):
        raw, source = _plain(scenario), "<dict>"
    else:
        raw, source = load_scenario(Path(scenario)).model_dump(), os.fspath(scenario)
    if model is not None:
        raw["model"] = {**_without(raw.get("model", {}), "name", "factory"),
                        "factory": _reference(model, MODELS, "model", made)}
    if loader is not None:
        raw["data"] = {**_without(raw.get("data", {}), "dataset", "path", "partition", "alpha",
                                  "min_size", "synthetic", "shakespeare"),
                       "loader": _reference(loader, DATA_LOADERS, "loader", made)}
    if strategy is not None:
        raw["federation"] = {**raw.get("federation", {}),
                             "strategy": _reference(strategy, STRATEGIES, "strategy", made)}
    spec = scenario_from_dict(raw, source=source)
    store = None
    if db is not False:
        from aggregator.store import Store

        store = Store(None if db is None or db is True else str(db))
    result = run_scenario(spec, runtime, on_round=on_round, store=store)
    if report is not None:
        from simulations.reports import write_report

        write_report(result, Path(report))
    return SimulationRun(result)


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _without(table: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k not in keys}
