"""Run a scenario: data and partitions, the model, the ServerApp and ClientApp, a backend.

The harness only wires things together; the round loop (``aggregator.rounds``) and the
client's training (``client_runtime``) are the same objects on every backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from aggregator.backend import select_backend
from aggregator.rounds import BeforeRound, FederationConfig, RoundOutcome
from aggregator.serverapp import FederationApp
from aggregator.strategies import Strategy, StrategyContext, build_strategy
from client_runtime.app import make_client_app
from fedcore import protocol
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from simulations.backends import BACKENDS
from simulations.datasets import Dataset, load_dataset
from simulations.partition import partition
from simulations.scenario import Scenario, ScenarioError, model_arguments, model_misfit
from simulations.secagg_section import secagg_config
from simulations.world import GeneratedLoader, World


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


@dataclass(frozen=True)
class Resume:
    """Where a resumed run picks up: the last committed round, its model and server state."""

    round: int
    params: np.ndarray = field(repr=False)
    server_state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class PreparedScenario:
    """Everything a run needs, built (and checked) before anything is stored or started."""

    scenario: Scenario
    data: Dataset = field(repr=False)
    loader: PartitionLoader = field(repr=False)
    spec: protocol.ModelSpec
    config: FederationConfig
    world: World | None = None  # the simulated population and its clock, if any


def prepare_scenario(scenario: Scenario) -> PreparedScenario:
    """Load the data, partition it and size the model; ``ScenarioError`` if that cannot work."""
    args = dataset_args(scenario)
    data = load_dataset(**args)
    fed = scenario.federation
    world = World.of(scenario) if scenario.population is not None else None
    if world is not None and scenario.population.generate:
        loader: Any = GeneratedLoader.of(scenario, data)
        parts = [np.arange(loader.samples)]
    else:
        loader = None
    try:
        parts = (
            parts
            if loader is not None
            else partition(
                data.y_train,
                scenario.data.partition,
                fed.num_clients,
                seed=scenario.seed,
                alpha=scenario.data.alpha,
                min_size=scenario.data.min_size,
                groups=data.groups_train,
            )
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
    if world is not None:
        config = world.federation_config(config)
    loader = loader if loader is not None else PartitionLoader(args, parts)
    return PreparedScenario(scenario, data, loader, spec, config, world)


@dataclass
class ServerSide:
    """What the server needs besides the round config: the initial model, how to evaluate a
    global vector on the held-out test set, and the scenario's strategy."""

    initial: np.ndarray = field(repr=False)
    evaluate: Callable[[np.ndarray], tuple[float, float]] = field(repr=False)
    strategy: Strategy


def server_side(prepared: PreparedScenario, device: str | None = None) -> ServerSide:
    """The server's model, evaluation and strategy for a prepared scenario (any backend, and a
    deployment), averaging on ``device`` (auto | cpu | gpu)."""
    scenario, data, spec = prepared.scenario, prepared.data, prepared.spec
    model = build_model(spec.name, **spec.kwargs)

    def evaluate_global(params: np.ndarray) -> tuple[float, float]:
        model.set_flat(params)
        return evaluate(model, data.x_test, data.y_test)

    fed = scenario.federation
    strategy = build_strategy(
        fed.strategy,
        dict(fed.strategy_options),
        StrategyContext(
            fed.num_clients, fed.clients_per_round, scenario.seed, select_backend(device)
        ),
    )
    return ServerSide(model.get_flat(), evaluate_global, strategy)


def simulate(
    prepared: PreparedScenario,
    backend: str = "inprocess",
    on_round: Callable[[RoundOutcome], None] | None = None,
    *,
    device: str | None = None,
    flower_verbose: bool = False,
    resume_from: Resume | None = None,
    before_round: BeforeRound | None = None,
) -> SimulationResult:
    """Run a prepared scenario on ``backend``; ``resume_from`` continues after a checkpoint.

    The result lists the rounds run by this call (after ``resume_from.round`` if given).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    start = time.perf_counter()
    scenario = prepared.scenario
    server = server_side(prepared, device)
    strategy = server.strategy
    rounds: list[RoundOutcome] = []

    world = prepared.world

    def record(outcome: RoundOutcome) -> None:
        if world is not None:  # device classes, simulated time and energy; the clock moves
            world.annotate(outcome)
        rounds.append(outcome)
        if on_round is not None:
            on_round(outcome)

    fed = scenario.federation
    initial = server.initial
    if resume_from is not None:
        initial = resume_from.params
        strategy.load_state_dict(resume_from.server_state)
    prepare_grid = None
    if world is not None:  # the population's network around either backend's grid
        prepare_grid = partial(world.attach, discover=backend != "inprocess")
    app = FederationApp(
        prepared.config,
        initial,
        strategy,
        server.evaluate,
        record,
        first_round=1 if resume_from is None else resume_from.round + 1,
        before_round=before_round,
        prepare_grid=prepare_grid,
    )
    client_app = make_client_app(
        prepared.loader,
        mods=[world.device_mod()] if world is not None else None,
        allow_import=True,
    )
    if backend == "inprocess":
        from flwr.app import Context, RecordDict

        from simulations.backends.inprocess import InProcessGrid
        from simulations.population import NODE_BASE

        base = NODE_BASE if world is not None else None
        grid = InProcessGrid(client_app, fed.num_clients, seed=scenario.seed, base=base)
        context = Context(grid.run.run_id, 0, {}, RecordDict(), {})
        app.server_app(grid, context)
    else:
        from simulations.backends.flower import run_on_flower

        run_on_flower(app.server_app, client_app, fed.num_clients, verbose=flower_verbose)
    final = app.result()
    return SimulationResult(scenario, backend, rounds, final, time.perf_counter() - start)
