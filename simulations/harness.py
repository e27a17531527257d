"""Run a prepared scenario (``simulations.prepare``): the ServerApp and ClientApp on a runtime.

The harness only wires things together; the round loop (``aggregator.rounds``) and the
client's training (``client_runtime``) are the same objects on every runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from aggregator.backend import select_backend
from aggregator.rounds import BeforeRound, RoundOutcome
from aggregator.serverapp import FederationApp
from aggregator.strategies import Strategy, StrategyContext, build_strategy
from client_runtime.app import make_client_app
from client_runtime.secagg_app import node_credentials
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from fedcore.nn import set_state
from fedcore.objectives import objective
from simulations.prepare import PreparedScenario
from simulations.runtimes import RUNTIMES
from simulations.scenario import Scenario
from simulations.secagg_section import simulated_identities


@dataclass
class SimulationResult:
    """The outcome of a simulated run."""

    scenario: Scenario
    runtime: str  # where the ClientApps ran (simulations.runtimes.RUNTIMES)
    rounds: list[RoundOutcome]
    final: np.ndarray = field(repr=False)
    seconds: float
    run_id: int | None = None
    initial_test_loss: float | None = None  # language models: the starting model's test loss

    @property
    def final_accuracy(self) -> float | None:
        """Test accuracy (the loss's metric) of the final global model on the server's test
        set; None without one."""
        return self.rounds[-1].test_accuracy


@dataclass(frozen=True)
class Resume:
    """Where a resumed run picks up: the last committed round, its model and server state."""

    round: int
    params: np.ndarray = field(repr=False)
    server_state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass
class ServerSide:
    """What the server needs besides the round config: the initial model, how to evaluate a
    global vector on the held-out test set (None: ``[evaluation] server = false``), and the
    scenario's strategy."""

    initial: np.ndarray = field(repr=False)
    evaluate: Callable[[np.ndarray], tuple[float, float]] | None = field(repr=False)
    strategy: Strategy


def server_side(prepared: PreparedScenario, array_backend: str | None = None) -> ServerSide:
    """The server's model, evaluation and strategy for a prepared scenario (any runtime, and a
    deployment), averaging on ``array_backend`` (auto | cpu | gpu: ``aggregator.backend``)."""
    scenario, data, spec = prepared.scenario, prepared.data, prepared.spec
    model = build_model(spec.name, **spec.kwargs)  # the server's own, for evaluation
    loss = objective(scenario.train.loss, data.y_test)

    def evaluate_global(params: np.ndarray) -> tuple[float, float]:
        set_state(model, params)
        return evaluate(model, data.x_test, data.y_test, loss=loss)

    fed = scenario.federation
    strategy = build_strategy(
        fed.strategy,
        dict(fed.strategy_options),
        StrategyContext(
            fed.num_clients, fed.clients_per_round, scenario.seed, select_backend(array_backend)
        ),
    )
    on_server = scenario.evaluation is None or scenario.evaluation.server
    return ServerSide(prepared.initial, evaluate_global if on_server else None, strategy)


def simulate(
    prepared: PreparedScenario,
    runtime: str = "inprocess",
    on_round: Callable[[RoundOutcome], None] | None = None,
    *,
    array_backend: str | None = None,
    flower_verbose: bool = False,
    resume_from: Resume | None = None,
    before_round: BeforeRound | None = None,
) -> SimulationResult:
    """Run a prepared scenario on ``runtime``; ``resume_from`` continues after a checkpoint.

    The result lists the rounds run by this call (after ``resume_from.round`` if given).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    start = time.perf_counter()
    scenario = prepared.scenario
    server = server_side(prepared, array_backend)
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
    # a fine-tuned language model reports its perplexity before and after
    initial_loss = server.evaluate(initial)[0] if prepared.data.sequence_targets else None
    prepare_grid = None
    if world is not None:  # the population's network around either runtime's grid
        prepare_grid = partial(world.attach, discover=runtime != "inprocess")
    elif prepared.config.asynchrony is not None:  # virtual time, no latency: deterministic
        from simulations.runtimes.simulated import SimulatedGrid

        prepare_grid = partial(SimulatedGrid, network=None)
    config, credentials = simulated_identities(prepared.config)
    app = FederationApp(
        config,
        initial,
        strategy,
        server.evaluate,
        record,
        first_round=1 if resume_from is None else resume_from.round + 1,
        resume_state=None if resume_from is None else resume_from.server_state,
        before_round=before_round,
        prepare_grid=prepare_grid,
    )
    client_app = make_client_app(
        prepared.loader,
        mods=[world.device_mod()] if world is not None else None,
        allow_import=True,
        credentials=credentials or node_credentials,
    )
    if runtime == "inprocess":
        from flwr.app import Context, RecordDict

        from simulations.population import NODE_BASE
        from simulations.runtimes.inprocess import InProcessGrid

        base = NODE_BASE if world is not None else None
        grid = InProcessGrid(client_app, fed.num_clients, seed=scenario.seed, base=base)
        context = Context(grid.run.run_id, 0, {}, RecordDict(), {})
        app.server_app(grid, context)
    else:
        from simulations.runtimes.flower import run_on_flower

        run_on_flower(app.server_app, client_app, fed.num_clients, verbose=flower_verbose)
    final = app.result()
    return SimulationResult(scenario, runtime, rounds, final, time.perf_counter() - start,
                            initial_test_loss=initial_loss)
