"""A simulated world for one run: the population, its virtual clock and network, wired in.

The round loop stays generic: it gets a client directory (who is available in round n, from the
population and the clock's time of day) instead of querying every node each round; either
runtime's grid is wrapped in the simulated network (``attach``); each node learns its device
class from a ClientApp mod (``device_mod``); and each finished round is annotated here with
device classes, simulated seconds and energy before it is stored. In-process, client ``c`` is
node ``NODE_BASE + c``; Flower's runtime numbers its own nodes, so they are asked once who they
are (``attach(grid, discover=True)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.rounds import FederationConfig, RoundOutcome
from simulations.clock import DEADLINE, SimulatedNetwork, VirtualClock
from simulations.population import Directory, NodeMap, Population

if TYPE_CHECKING:  # avoids an import cycle with scenario.py
    from flwr.app import Context, Message
    from flwr.serverapp import Grid

    from simulations.datasets import Dataset
    from simulations.scenario import Scenario


@dataclass
class World:
    """Population, clock and network of one simulated run."""

    population: Population
    clock: VirtualClock
    network: SimulatedNetwork
    nodes: NodeMap = field(default_factory=NodeMap)  # the network's map, shared
    available: dict[int, int] = field(default_factory=dict)  # round -> available clients

    @classmethod
    def of(cls, scenario: Scenario) -> World:
        """The world a scenario's ``[population]`` describes."""
        section = scenario.population
        assert section is not None and section.size is not None
        population = Population(section, section.size, scenario.seed)
        nodes = NodeMap()
        return cls(
            population,
            VirtualClock(start_hour=section.availability.start_hour),
            SimulatedNetwork(population, section.deadline_s, nodes),
            nodes,
        )

    def attach(self, grid: Grid, discover: bool = False, timeout: float = 120.0) -> Grid:
        """``grid`` behind the simulated network; with ``discover``, first ask each of the
        population's nodes (waiting up to ``timeout`` s for all to connect) who it is."""
        from simulations.runtimes.simulated import SimulatedGrid

        if discover:
            from aggregator.rounds import discover_clients, wait_for_nodes

            node_ids = wait_for_nodes(grid, self.population.size, timeout)
            self.nodes.bind(discover_clients(grid, node_ids))
        return SimulatedGrid(grid, self.network)

    def device_mod(self) -> Callable[[Message, Context, Callable], Message]:
        """A ClientApp mod telling each node its device class (from its partition id)."""
        return _DeviceMod(self.population)

    def directory(self, round_number: int) -> Directory:
        """Who may be selected in this round (``FederationConfig.directory``)."""
        found = self.population.directory(round_number, self.clock.hour, self.nodes)
        self.available[round_number] = len(found)
        return found

    def federation_config(self, config: FederationConfig) -> FederationConfig:
        """``config`` with the known directory and the population's over-selection."""
        return replace(
            config,
            directory=self.directory,
            over_selection=self.population.section.over_selection,
            min_nodes=0,
        )

    def annotate(self, outcome: RoundOutcome) -> None:
        """Fill in device classes and the round's simulated figures; advance the clock."""
        outcome.clients = [
            c if c.device_class else replace(c, device_class=self.population.device_of(c.client_id))
            for c in outcome.clients
        ]
        outcome.clients = [self._spent(outcome.number, c) for c in outcome.clients]
        asynchronous = "sim_clock_s" in outcome.metrics  # an async step keeps its own time
        if not asynchronous:  # a round's leftovers; an async client's wait for its late reply
            for key in [k for k in self.network.spent if k[0] <= outcome.number]:
                del self.network.spent[key]
        accepted = [c.metrics for c in outcome.clients if c.accepted and c.metrics]
        missed = any(c.reason and DEADLINE in c.reason for c in outcome.clients)
        deadline = self.network.deadline_s
        slowest = max((m.get("sim_seconds", 0.0) for m in accepted), default=0.0)
        length = deadline if missed and deadline is not None else slowest
        if asynchronous:
            length = float(outcome.metrics["sim_clock_s"]) - self.clock.now_s
        self.clock.advance(length)
        outcome.metrics = {
            **outcome.metrics,
            "sim_round_s": length,
            "sim_clock_s": self.clock.now_s,
            "available": float(self.available.get(outcome.number, 0)),
            "energy_j": sum(c.metrics.get("energy_j", 0.0) for c in outcome.clients),
            "compute_s_mean": _mean(m.get("sim_compute_s", 0.0) for m in accepted),
            "network_s_mean": _mean(m.get("sim_network_s", 0.0) for m in accepted),
        }

    def _spent(self, number: int, client: Any) -> Any:
        """``client`` with the energy it drew before it dropped out or was cut off (in an
        asynchronous step, while training from the model ``staleness`` steps old)."""
        if client.accepted:
            return client
        sent_for = number - int(client.metrics.get("staleness", 0))
        joules = self.network.take_spent(sent_for, client.client_id)
        if joules is None:
            return client
        return replace(client, metrics={**client.metrics, "energy_j": joules})

    def restore_clock(self, rounds_metrics: list[dict[str, Any] | None]) -> None:
        """Set the clock as it was after the stored rounds (their ``metrics``, in order)."""
        stored = [m for m in rounds_metrics if m and "sim_clock_s" in m]
        self.clock.history = [float(m.get("sim_round_s", 0.0)) for m in stored]
        self.clock.now_s = float(stored[-1]["sim_clock_s"]) if stored else 0.0


def _mean(values: Any) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else 0.0


@dataclass(frozen=True)
class _DeviceMod:
    """The node config a simulated client is told, set before its ClientApp runs (picklable,
    so Flower's Ray workers get it along with the app)."""

    population: Population

    def __call__(self, msg: Message, context: Context, call_next: Callable) -> Message:
        from fedcore import protocol

        client = int(context.node_config[protocol.PARTITION_ID])
        context.node_config = {**context.node_config, **self.population.node_config(client)}
        return call_next(msg, context)


class GeneratedLoader:
    """``client_id -> (x, y)`` generated on demand from FedProx's SYNTHETIC(alpha, beta).

    Client ``k`` is generator ``k``. The first ``data.synthetic.num_clients`` generators also
    make the server's test set: those clients train on their training rows only (so no client
    trains on a test example); every other client generates its examples when asked. Nothing
    is cached: memory grows with the clients of a round, not with the population.
    """

    def __init__(
        self,
        alpha: float,
        beta: float,
        samples: int,
        seed: int,
        pooled: Dataset,
        shared_task: bool = False,
    ) -> None:
        self.alpha, self.beta, self.samples, self.seed = alpha, beta, samples, seed
        self.pooled = pooled
        self.shared_task = shared_task

    @classmethod
    def of(cls, scenario: Scenario, pooled: Dataset) -> GeneratedLoader:
        """The loader of a scenario with ``population.generate`` (synthetic data)."""
        section = scenario.data.synthetic
        assert section is not None
        return cls(
            section.alpha,
            section.beta,
            section.samples_per_client,
            scenario.seed,
            pooled,
            section.shared_task,
        )

    def __call__(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        from simulations.datasets.synthetic import synthetic_client

        groups = self.pooled.groups_train
        if groups is not None and client_id <= int(groups.max()):
            rows = np.flatnonzero(groups == client_id)
            return self.pooled.x_train[rows], self.pooled.y_train[rows]
        return synthetic_client(
            client_id, self.alpha, self.beta, self.samples, self.seed, self.shared_task
        )
