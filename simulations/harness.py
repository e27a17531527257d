"""Run a scenario: data and partitions, the model, the ServerApp and ClientApp, a backend.

The harness only wires things together; the round loop (``aggregator.rounds``) and the
client's training (``client_runtime``) are the same objects on every backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.backend import select_backend
from aggregator.rounds import FederationConfig, RoundOutcome
from aggregator.serverapp import FederationApp
from aggregator.store import Store
from aggregator.strategies import StrategyContext, build_strategy
from client_runtime.app import make_client_app
from fedcore import protocol
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from simulations.backends import BACKENDS
from simulations.datasets import Dataset, load_dataset
from simulations.partition import partition
from simulations.scenario import Scenario, ScenarioError, model_arguments, model_misfit
from simulations.secagg_section import secagg_config


@dataclass
class SimulationResult:
    """The outcome of a simulated run."""

    scenario: Scenario
    backend: str
    rounds: list[RoundOutcome]
    final: np.ndarray = field(repr=False)
    seconds: float
    run_id: int | None = None

    @property
    def final_accuracy(self) -> float:
        """Test accuracy of the final global model."""
        return self.rounds[-1].test_accuracy


class PartitionLoader:
    """``partition_id -> (x, y)`` for simulated clients; picklable, so Ray actors can use it.

    It carries only the dataset's name and the index arrays; each process loads the dataset
    once (cached) and slices its shards lazily.
    """

    def __init__(self, dataset_args: dict[str, Any], parts: list[np.ndarray]) -> None:
        self.dataset_args = dataset_args
        self.parts = parts
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_args": self.dataset_args, "parts": self.parts, "_cache": {}}

    def __call__(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        if partition_id not in self._cache:
            if not 0 <= partition_id < len(self.parts):
                raise ValueError(f"partition {partition_id} out of range 0..{len(self.parts) - 1}")
            data = load_dataset(**self.dataset_args)
            idx = self.parts[partition_id]
            self._cache[partition_id] = (data.x_train[idx], data.y_train[idx])
        return self._cache[partition_id]


def model_spec(scenario: Scenario, data: Dataset) -> protocol.ModelSpec:
    """The model a scenario asks for, sized for its dataset (see `model_arguments`).

    ``ScenarioError`` naming ``model.name`` if the model cannot learn this data (e.g. an LSTM
    on digits, a CNN on text).
    """
    name = scenario.model.name
    misfit = model_misfit(name, data)
    if misfit:
        raise ScenarioError(f"{scenario.name}: model.name: {misfit}")
    return protocol.ModelSpec(name, model_arguments(scenario.model, data, scenario.seed))


def dataset_args(scenario: Scenario) -> dict[str, Any]:
    """Keyword arguments of ``load_dataset`` for this scenario."""
    return {
        "name": scenario.data.dataset,
        "test_fraction": scenario.data.test_fraction,
        "seed": scenario.seed,
        **scenario.data.options,
    }


@dataclass
class PreparedScenario:
    """Everything a run needs, built (and checked) before anything is stored or started."""

    scenario: Scenario
    data: Dataset = field(repr=False)
    loader: PartitionLoader = field(repr=False)
    spec: protocol.ModelSpec
    config: FederationConfig


def prepare_scenario(scenario: Scenario) -> PreparedScenario:
    """Load the data, partition it and size the model; ``ScenarioError`` if that cannot work."""
    args = dataset_args(scenario)
    data = load_dataset(**args)
    fed = scenario.federation
    try:
        parts = partition(
            data.y_train,
            scenario.data.partition,
            fed.num_clients,
            seed=scenario.seed,
            alpha=scenario.data.alpha,
            min_size=scenario.data.min_size,
            groups=data.groups_train,
        )
    except ValueError as exc:  # e.g. no Dirichlet draw gives every client min_size examples
        raise ScenarioError(f"{scenario.name}: data.partition: {exc}") from exc
    spec = model_spec(scenario, data)
    train = scenario.train
    config = FederationConfig(
        num_rounds=fed.rounds,
        clients_per_round=fed.clients_per_round,
        seed=scenario.seed,
        min_nodes=fed.num_clients,
        train=protocol.TrainInstructions(
            round=0,
            model=spec,
            local_epochs=train.local_epochs,
            batch_size=train.batch_size,
            learning_rate=train.learning_rate,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            seed=scenario.seed,
            compression=fed.compression,
            compression_options=dict(fed.compression_options),
        ),
        secagg=secagg_config(scenario, max(len(part) for part in parts)),
    )
    return PreparedScenario(scenario, data, PartitionLoader(args, parts), spec, config)


def run_scenario(
    scenario: Scenario | PreparedScenario,
    backend: str = "inprocess",
    on_round: Callable[[RoundOutcome], None] | None = None,
    store: Store | None = None,
    flower_verbose: bool = False,
    device: str | None = None,
) -> SimulationResult:
    """Run ``scenario`` on ``backend`` and return every round's outcome and the final model.

    With a ``store``, the run and each round are committed as they complete, and the run is
    marked ``completed`` or ``failed`` at the end. Nothing is stored for a scenario that
    ``prepare_scenario`` rejects.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    prepared = scenario if isinstance(scenario, PreparedScenario) else prepare_scenario(scenario)
    spec = prepared.scenario
    run_id = None
    if store is not None:
        run_id = store.create_run(spec.name, backend, spec.seed, spec.model_dump(mode="json"))
    try:
        result = _run(prepared, backend, on_round, store, run_id, flower_verbose, device)
    except BaseException as exc:
        if store is not None and run_id is not None:
            store.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if store is not None and run_id is not None:
        store.finish_run(run_id, "completed")
    result.run_id = run_id
    return result


def _run(
    prepared: PreparedScenario,
    backend: str,
    on_round: Callable[[RoundOutcome], None] | None,
    store: Store | None,
    run_id: int | None,
    flower_verbose: bool,
    device: str | None = None,
) -> SimulationResult:
    start = time.perf_counter()
    scenario, data, spec = prepared.scenario, prepared.data, prepared.spec
    server_model = build_model(spec.name, **spec.kwargs)

    def evaluate_global(params: np.ndarray) -> tuple[float, float]:
        server_model.set_flat(params)
        return evaluate(server_model, data.x_test, data.y_test)

    rounds: list[RoundOutcome] = []

    def record(outcome: RoundOutcome) -> None:
        rounds.append(outcome)
        if store is not None and run_id is not None:
            store.record_round(run_id, outcome)
        if on_round is not None:
            on_round(outcome)

    fed = scenario.federation
    app = FederationApp(
        prepared.config,
        server_model.get_flat(),
        build_strategy(
            fed.strategy,
            dict(fed.strategy_options),
            StrategyContext(
                fed.num_clients, fed.clients_per_round, scenario.seed, select_backend(device)
            ),
        ),
        evaluate_global,
        record,
    )
    client_app = make_client_app(prepared.loader)
    if backend == "inprocess":
        from flwr.app import Context, RecordDict

        from simulations.backends.inprocess import InProcessGrid

        grid = InProcessGrid(client_app, fed.num_clients, seed=scenario.seed)
        context = Context(grid.run.run_id, 0, {}, RecordDict(), {})
        app.server_app(grid, context)
    else:
        from simulations.backends.flower import run_on_flower

        run_on_flower(app.server_app, client_app, fed.num_clients, verbose=flower_verbose)
    final = app.result()
    return SimulationResult(scenario, backend, rounds, final, time.perf_counter() - start)
