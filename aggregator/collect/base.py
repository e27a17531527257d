"""Collect: one interface, three ways to gather a round's contributions.

A collector sends the selected clients the global model and the round's instructions and
yields, for each client, either a validated `Contribution` (its decoded update, not yet
judged by the strategy), a `SecureSum` (SecAgg+: the clients' updates already summed, so only
their mean is seen) or a `Rejection` with its reason. It never raises because of what a client
sent; it raises ``RoundFailed`` only when the round as a whole cannot go on (e.g. SecAgg+
aborted). Collectors depend on the round's types (``aggregator.round_types``), never on the
round loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from aggregator.backend import Backend
from aggregator.round_types import ClientOutcome, FederationConfig, RoundFailed
from aggregator.select import Selection
from aggregator.strategies import AggregationError, RoundAggregation, Strategy
from aggregator.updates import ClientUpdate
from fedcore import protocol
from fedcore.wire import vector_record


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """A per-client, per-round seed derived from the run seed (order-independent)."""
    return int(np.random.SeedSequence([seed, round_number, client_id]).generate_state(1)[0])


def finish_round(
    aggregation: RoundAggregation, outcomes: list[ClientOutcome], label: str, what: str
) -> np.ndarray:
    """The new model of a round (or an asynchronous step) whose updates were offered;
    ``RoundFailed`` naming ``label`` when none was accepted or the result is unusable."""
    if not any(o.accepted for o in outcomes):
        text = "; ".join(f"client {o.client_id}: {o.reason}" for o in outcomes)
        raise RoundFailed(f"{label}: no {what} was accepted ({text})")
    try:
        return aggregation.finish()
    except AggregationError as exc:
        raise RoundFailed(f"{label}: {exc}") from exc


def train_records(
    config: FederationConfig,
    client_options: Mapping[str, Any],
    round_number: int,
    global_record: ArrayRecord,
) -> Callable[[int], dict[str, Any]]:
    """``client_id -> records`` of a round's train messages: the global model and the
    round's instructions (one record each, shared by every message; ``client_options``: the
    strategy's settings) and the client's own seed (``protocol.CLIENT_CONFIG``, which the
    client lays over the instructions)."""
    train = config.train
    settings = train.settings.with_values(dict(client_options))
    shared = ConfigRecord(replace(train, round=round_number, settings=settings).to_config())

    def records(client_id: int) -> dict[str, Any]:
        seed = client_seed(config.seed, round_number, client_id)
        return {
            protocol.GLOBAL: global_record,
            protocol.CONFIG: shared,
            protocol.CLIENT_CONFIG: ConfigRecord({"seed": seed}),
        }

    return records


@dataclass
class RoundPlan:
    """What a collector needs for one round: where, whom, from which model, with what."""

    grid: Grid
    selection: Selection
    params: np.ndarray = field(repr=False)
    number: int
    config: FederationConfig
    client_options: Mapping[str, Any] = field(default_factory=dict)  # the strategy's
    declared: Mapping[int, int] = field(default_factory=dict)  # examples each client declared
    backend: Backend | None = None  # where sums are taken (the strategy's array backend)
    records: Callable[[int], dict[str, Any]] = field(init=False, repr=False)  # client -> records

    def __post_init__(self) -> None:
        self.global_record = vector_record(self.params)
        self.bytes_down = sum(len(a.data) for a in self.global_record.values())
        self.records = train_records(
            self.config, self.client_options, self.number, self.global_record
        )

    def outcome(self, client_id: int, **fields: Any) -> ClientOutcome:
        """A not-yet-accepted outcome of ``client_id`` (the global model was sent to it)."""
        node = self.selection.nodes[client_id]
        return ClientOutcome(client_id, node, accepted=False, bytes_down=self.bytes_down, **fields)

    def most_examples(self, client_id: int) -> int:
        """The most examples ``client_id`` may claim (what it declared, within the cap)."""
        cap = self.config.max_examples
        return min(cap, self.declared.get(client_id, cap))


@dataclass
class Contribution:
    """One client's decoded, validated update, for the strategy to judge and fold in."""

    update: ClientUpdate
    outcome: ClientOutcome


@dataclass
class SecureSum:
    """Several clients' updates as one sum (SecAgg+): ``mean_update`` is the example-weighted
    mean of ``local - global`` (host float64), ``weight`` the examples behind it; ``outcomes``
    are the clients in it (accepted) and those that dropped out (rejected). ``clip``: what
    validated them instead of the norm guard (no single update reaches the server): each
    client clipped every coordinate to +-clip before masking, and the sum was checked
    against that bound."""

    mean_update: np.ndarray = field(repr=False)
    weight: float
    outcomes: list[ClientOutcome]
    clip: float


@dataclass
class Rejection:
    """A client whose reply did not make it (the outcome's ``reason`` says why)."""

    outcome: ClientOutcome


Collected = Contribution | SecureSum | Rejection


class Collector(Protocol):
    """Gathers one round's contributions; one object serves every round of a run (it may
    keep what carries across rounds, e.g. SecAgg+ keys advertised ahead)."""

    def check(self, strategy: Strategy) -> None:
        """``RoundFailed`` if this way of collecting cannot serve ``strategy``."""
        ...

    def collect(self, plan: RoundPlan) -> Iterator[Collected]:
        """Send the round out and yield what comes back (every selected client once, except
        that a duplicate reply is a further `Rejection`)."""
        ...
