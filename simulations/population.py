"""Simulated populations: which device each client is, who is available when, who drops out.

A scenario's ``[population]`` table (``PopulationSection``)::

    [population]
    size = 100000                   # clients (sets federation.num_clients; default: that)
    devices = { android-entry-2gb = 50, android-mid = 30, rpi-4-2gb = 20 }  # percent, sum 100
    dropout = 0.05                  # chance a selected client drops out mid-round
    deadline_s = 120.0              # simulated seconds a round waits (none: the slowest)
    over_selection = 1.3            # select ceil(1.3 k), keep the first k that report
    adapt_batch = true              # a client that does not fit memory halves its batch
    generate = true                 # synthetic only: each client generates its own data
    [population.availability]
    kind = "charging"               # always | probability | charging
    probability = 0.8               # probability: per round; charging: inside the window
    window_hours = 8.0              # charging: each client's daily window (starts 19:00-03:00)
    start_hour = 20.0               # charging: simulated time of day when the run starts

Everything is a pure function of ``(seed, client id, round)``: no per-client state is held, so
memory does not grow with the population. Device classes are spread by a golden-ratio sequence,
which hits the mix's percentages to within a client or two at any population size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator
from pydantic_core import PydanticCustomError

PHI = (math.sqrt(5.0) - 1.0) / 2.0  # golden-ratio fraction: evenly spread device classes
SQRT2 = math.sqrt(2.0) - 1.0  # a second, independent sequence for charging windows
NODE_BASE = 1 << 40  # simulated node id = NODE_BASE + client id


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AvailabilitySection(_Section):
    """When a client can be selected."""

    kind: Literal["always", "probability", "charging"] = "always"
    probability: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    window_hours: Annotated[float, Field(gt=0.0, le=24.0)] = 8.0
    start_hour: Annotated[float, Field(ge=0.0, lt=24.0)] = 20.0


class PopulationSection(_Section):
    """A population of simulated devices (see the module docstring)."""

    size: PositiveInt | None = None
    devices: dict[str, Annotated[float, Field(gt=0.0, le=100.0)]]
    availability: AvailabilitySection = AvailabilitySection()
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    deadline_s: PositiveFloat | None = None
    over_selection: Annotated[float, Field(ge=1.0, le=10.0)] = 1.0
    adapt_batch: bool = False
    generate: bool = False

    @field_validator("devices")
    @classmethod
    def _known_mix(cls, value: dict[str, float]) -> dict[str, float]:
        from device_profiles import catalog

        known = sorted(catalog())
        if not value:
            raise PydanticCustomError("scenario", "name at least one device class")
        for name in value:
            if name not in known:
                raise PydanticCustomError(
                    "scenario",
                    f"unknown device {name!r} (known: {', '.join(known)})",
                    {"key": f"population.devices.{name}"},
                )
        total = sum(value.values())
        if abs(total - 100.0) > 1e-6:
            raise PydanticCustomError("scenario", f"the mix must sum to 100 %, got {total:g} %")
        return value


def node_id_of(client_id: int) -> int:
    """The in-process node that stands for ``client_id``."""
    return NODE_BASE + int(client_id)


class NodeMap:
    """Client id <-> node id of a simulated population.

    In-process, client ``c`` is node ``NODE_BASE + c``. A runtime that numbers its own nodes
    (Flower's simulation runtime) is asked once who is who, and ``bind`` keeps its answer.
    """

    def __init__(self) -> None:
        self._node: dict[int, int] | None = None
        self._client: dict[int, int] = {}

    def bind(self, found: Mapping[int, int]) -> None:
        """Use the nodes that reported themselves, ``{client_id: node_id}``."""
        self._node = {int(c): int(n) for c, n in found.items()}
        self._client = {n: c for c, n in self._node.items()}

    def node(self, client_id: int) -> int:
        """The node of ``client_id`` (``KeyError`` if a bound runtime has no such client)."""
        return node_id_of(client_id) if self._node is None else self._node[int(client_id)]

    def client(self, node_id: int) -> int:
        """The client id of ``node_id``."""
        return int(node_id) - NODE_BASE if self._node is None else self._client[int(node_id)]

    def present(self, ids: np.ndarray) -> np.ndarray:
        """The clients of ``ids`` that have a node (all of them in-process)."""
        if self._node is None:
            return ids
        return ids[np.isin(ids, np.fromiter(self._node, dtype=np.int64))]


class Directory(Mapping[int, int]):
    """``{client_id: node_id}`` over a sorted id array, without building a dict."""

    def __init__(self, ids: np.ndarray, nodes: NodeMap | None = None) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.nodes = nodes or NodeMap()

    def __getitem__(self, client_id: int) -> int:
        i = int(np.searchsorted(self.ids, client_id))
        if i >= len(self.ids) or self.ids[i] != client_id:
            raise KeyError(client_id)
        return self.nodes.node(client_id)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Population:
    """The runtime view of a ``PopulationSection`` for one run."""

    section: PopulationSection
    size: int
    seed: int

    @property
    def names(self) -> list[str]:
        """Device classes of the mix, in the order given."""
        return list(self.section.devices)

    def _spread(self, ids: np.ndarray, step: float, salt: int) -> np.ndarray:
        offset = np.random.default_rng([self.seed, salt]).random()
        return (ids.astype(np.float64) * step + offset) % 1.0

    def device_index(self, ids: np.ndarray) -> np.ndarray:
        """Index into ``names`` of each client's device class."""
        cum = np.cumsum(list(self.section.devices.values())) / 100.0
        idx = np.searchsorted(cum, self._spread(np.asarray(ids), PHI, 1), side="right")
        return np.minimum(idx, len(cum) - 1)

    def device_of(self, client_id: int) -> str:
        """The device class (catalog name) of one client."""
        return self.names[int(self.device_index(np.array([client_id]))[0])]

    def available(self, round_number: int, hour: float) -> np.ndarray:
        """Sorted ids of the clients that can be selected in this round at ``hour`` (0-24)."""
        model = self.section.availability
        if model.kind == "always":
            return np.arange(self.size, dtype=np.int64)
        mask = np.ones(self.size, dtype=bool)
        if model.kind == "charging":
            starts = (19.0 + 8.0 * self._spread(np.arange(self.size), SQRT2, 2)) % 24.0
            mask = (hour - starts) % 24.0 < model.window_hours
        if model.probability < 1.0:
            draw = np.random.default_rng([self.seed, 3, round_number]).random(self.size)
            mask &= draw < model.probability
        return np.flatnonzero(mask).astype(np.int64)

    def directory(self, round_number: int, hour: float, nodes: NodeMap | None = None) -> Directory:
        """The available clients of a round (that have a node) as ``{client_id: node_id}``."""
        nodes = nodes or NodeMap()
        return Directory(nodes.present(self.available(round_number, hour)), nodes)

    def drops_out(self, round_number: int, client_id: int) -> bool:
        """Whether this client drops out mid-round in this round (seeded, order-free)."""
        if self.section.dropout <= 0.0:
            return False
        rng = np.random.default_rng([self.seed, 4, round_number, client_id])
        return bool(rng.random() < self.section.dropout)

    def node_config(self, client_id: int) -> dict[str, int | str | bool]:
        """What a simulated node is told about itself (``client_runtime.device`` reads it)."""
        from fedcore import protocol

        return {
            protocol.PARTITION_ID: int(client_id),
            "num-partitions": self.size,
            protocol.DEVICE: self.device_of(client_id),
            protocol.ADAPT_BATCH: self.section.adapt_batch,
            protocol.SIMULATED: True,
        }


def population_defaults(raw: Any) -> Any:
    """Scenario pre-check: ``population.size`` and ``federation.num_clients`` are one number
    (either may give it); a population smaller than ``clients_per_round`` names the size."""
    if not isinstance(raw, Mapping):
        return raw
    population, federation = raw.get("population"), raw.get("federation")
    if not isinstance(population, Mapping) or not isinstance(federation, Mapping):
        return raw
    size, clients = population.get("size"), federation.get("num_clients")
    if type(size) is int and clients is None:
        federation = {**federation, "num_clients": size}
    elif type(clients) is int and size is None:
        population = {**population, "size": clients}
    elif size != clients:
        raise PydanticCustomError(
            "scenario",
            f"{size!r} != federation.num_clients ({clients!r}): give one of them",
            {"key": "population.size"},
        )
    per_round = federation.get("clients_per_round")
    size = population.get("size")
    if type(size) is int and type(per_round) is int and 0 < size < per_round:
        raise PydanticCustomError(
            "scenario",
            f"a population of {size} is smaller than federation.clients_per_round ({per_round})",
            {"key": "population.size"},
        )
    return {**raw, "population": population, "federation": federation}
