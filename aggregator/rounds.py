"""The round loop, written once against Flower's ``Grid``.

Every backend runs this same loop: the in-process simulation hands it a grid that calls the
ClientApp directly, Flower's simulation runtime and a real SuperLink hand it theirs. One round:
sample clients, send each the global vector and its instructions, validate and fold in each
reply, step the server optimizer, evaluate, report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from aggregator.asynchronous import AsyncConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.strategies import AggregationError, Strategy
from aggregator.updates import (
    DEFAULT_MAX_EXAMPLES,
    ClientUpdate,
    Rejected,
    client_report,
    decode_client_info,
    decode_reply,
)
from fedcore import protocol
from fedcore.wire import vector_record

ClientDirectory = Callable[[int], Mapping[int, int]]


@dataclass(frozen=True)
class FederationConfig:
    """What the server needs to drive a run (independent of any scenario file format)."""

    num_rounds: int
    clients_per_round: int
    train: protocol.TrainInstructions  # ``round`` and ``seed`` are filled per client
    seed: int
    timeout: float | None = None
    min_nodes: int = 0  # wait for this many nodes before the first round (0: clients_per_round)
    connect_timeout: float = 120.0
    secagg: SecAggConfig | None = None  # secure aggregation (SecAgg+) for every round
    # Who may be selected in round n, ``{client_id: node_id}``, when the server knows its
    # clients (a simulated population); None: ask every connected node once (``query``).
    directory: ClientDirectory | None = None
    over_selection: float = 1.0  # select ceil(k * this), keep the first k replies
    max_examples: int = DEFAULT_MAX_EXAMPLES  # the most examples one reply may claim
    # buffered asynchronous training (FedBuff): ``num_rounds`` counts server steps
    asynchrony: AsyncConfig | None = None


@dataclass(frozen=True)
class ClientOutcome:
    """One selected client's part in a round."""

    client_id: int
    node_id: int
    accepted: bool
    num_examples: int = 0
    train_loss: float | None = None
    seconds: float | None = None
    reason: str | None = None
    bytes_up: int = 0  # update bytes on the wire (after compression)
    bytes_down: int = 0  # global model bytes sent to the client
    device_class: str | None = None  # as the client reported it (or a simulation assigned)
    metrics: dict[str, float] = field(default_factory=dict)  # extra numeric reply metrics


@dataclass
class RoundOutcome:
    """What one round produced; handed to ``on_round`` before the next round starts."""

    number: int
    clients: list[ClientOutcome]
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    params: np.ndarray = field(repr=False)
    epsilon: float | None = None  # differential privacy spent so far, if any
    server_state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # resumable
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. simulated seconds, energy

    @property
    def num_accepted(self) -> int:
        """Clients whose update went into the aggregate."""
        return sum(c.accepted for c in self.clients)

    @property
    def num_selected(self) -> int:
        """Distinct clients asked to train (a duplicate reply adds an outcome, not a client)."""
        return len({c.client_id for c in self.clients})

    @property
    def bytes_up(self) -> int:
        """Update bytes received this round."""
        return sum(c.bytes_up for c in self.clients)

    @property
    def bytes_down(self) -> int:
        """Global model bytes sent this round."""
        return sum(c.bytes_down for c in self.clients)


EvaluateFn = Callable[[np.ndarray], tuple[float, float]]
OnRound = Callable[[RoundOutcome], None]
BeforeRound = Callable[[int, "FederationConfig"], "FederationConfig"]


class StopRun(Exception):
    """Raised by ``before_round``/``on_round`` to end a run early (``paused`` or ``aborted``)."""

    def __init__(self, status: str, message: str = "") -> None:
        super().__init__(message or status)
        self.status = status


class RoundFailed(RuntimeError):
    """A round could not produce a model (e.g. every update was rejected)."""


def client_seed(seed: int, round_number: int, client_id: int) -> int:
    """A per-client, per-round seed derived from the run seed (order-independent)."""
    return int(np.random.SeedSequence([seed, round_number, client_id]).generate_state(1)[0])


def sample_clients(client_ids: Iterable[int], k: int, seed: int, round_number: int) -> list[int]:
    """Choose ``k`` distinct clients for a round, reproducibly from the run seed."""
    ids = sorted(client_ids)
    if k > len(ids):
        raise RoundFailed(
            f"round {round_number} needs {k} clients but only {len(ids)} are connected"
        )
    rng = np.random.default_rng([seed, round_number])
    return sorted(int(i) for i in rng.choice(ids, size=k, replace=False))


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float, poll: float = 0.2) -> list[int]:
    """Poll until ``min_nodes`` nodes are connected; ``RoundFailed`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        node_ids = list(grid.get_node_ids())
        if len(node_ids) >= min_nodes:
            return node_ids
        if time.monotonic() >= deadline:
            raise RoundFailed(
                f"only {len(node_ids)} of the {min_nodes} nodes needed "
                f"connected within {timeout:g} s"
            )
        time.sleep(poll)


def discover_clients(
    grid: Grid, node_ids: list[int], timeout: float | None = None
) -> dict[int, int]:
    """Ask each node who it is; return ``{client_id: node_id}`` (see ``discover``)."""
    return discover(grid, node_ids, timeout)[0]


def discover(
    grid: Grid, node_ids: list[int], timeout: float | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """Ask each node who it is; return ``{client_id: node_id}`` and ``{client_id: examples
    it declares}`` (a reply's ``num_examples`` may never exceed what its client declared).

    Two nodes claiming one client id (two devices started with the same partition) keep the
    lower node id and log a warning naming both. A malformed reply leaves that node out.
    Raises ``RoundFailed`` with the first client error when no node answers properly.
    """
    queries = [Message(RecordDict(), node_id, "query", group_id="discover") for node_id in node_ids]
    clients: dict[int, int] = {}
    declared: dict[int, int] = {}
    errors: list[str] = []
    for reply in grid.send_and_receive(queries, timeout=timeout):
        try:
            client, count = decode_client_info(reply)
        except Rejected as exc:
            errors.append(str(exc))
            continue
        node = reply.metadata.src_node_id
        if client in clients:
            kept, dropped = sorted((clients[client], node))
            log(
                WARNING,
                "fedcore: nodes %d and %d both claim client %d; node %d is left out",
                kept,
                dropped,
                client,
                dropped,
            )
            if node != kept:
                continue
        clients[client] = node
        if count is None:
            declared.pop(client, None)
        else:
            declared[client] = count
    if not clients and node_ids:
        detail = f": {errors[0]}" if errors else ""
        raise RoundFailed(f"none of the {len(node_ids)} nodes answered the query{detail}")
    return clients, declared


def validate_update(vector: np.ndarray, expected_size: int) -> str | None:
    """Return why a dense update must be rejected (dtype, shape, NaN/inf), or None."""
    if vector.dtype != np.float32:
        return f"dtype {vector.dtype}, expected float32"
    if vector.shape != (expected_size,):
        return f"shape {vector.shape}, expected ({expected_size},)"
    if not np.isfinite(vector).all():
        return "non-finite values"
    return None


def train_records(
    config: FederationConfig, strategy: Strategy, round_number: int, global_record: ArrayRecord
) -> Callable[[int], dict[str, Any]]:
    """``client_id -> records`` of this round's train messages: the global model and the
    round's instructions (one record each, shared by every message) and the client's own seed
    (``protocol.CLIENT_CONFIG``, which the client lays over the instructions)."""
    train = config.train
    settings = train.settings.with_values(strategy.client_options)
    instructions = replace(train, round=round_number, settings=settings)
    shared = ConfigRecord(instructions.to_config())

    def records(client_id: int) -> dict[str, Any]:
        seed = client_seed(config.seed, round_number, client_id)
        return {
            protocol.GLOBAL: global_record,
            protocol.CONFIG: shared,
            protocol.CLIENT_CONFIG: ConfigRecord({"seed": seed}),
        }

    return records


def run_round(
    grid: Grid,
    clients: Mapping[int, int],
    params: np.ndarray,
    round_number: int,
    config: FederationConfig,
    strategy: Strategy,
    declared: Mapping[int, int] | None = None,
) -> tuple[np.ndarray, list[ClientOutcome]]:
    """Run one round of training; return the new global vector and each client's outcome.

    Replies are decoded, validated and folded in one at a time; a bad reply (client error,
    missing records, wrong shape or dtype, NaN/inf, oversized, outlier norm, a second reply
    from the same client) is rejected with its reason and the round goes on without it.
    With ``config.secagg`` the round runs SecAgg+ instead (``aggregator.secagg.round``).
    """
    if config.secagg is not None:
        from aggregator.secagg.round import run_secagg_round

        return run_secagg_round(grid, clients, params, round_number, config, strategy, declared)
    k = config.clients_per_round
    wanted = max(k, math.ceil(k * config.over_selection))
    # A population may have fewer available clients than k this round: take them all.
    floor = 0 if config.directory is not None else k
    wanted = min(wanted, max(floor, len(clients)))
    chosen = sample_clients(clients, wanted, config.seed, round_number)
    node_to_client = {clients[c]: c for c in chosen}
    global_record = vector_record(params)
    bytes_down = sum(len(a.data) for a in global_record.values())
    records = train_records(config, strategy, round_number, global_record)
    messages = [
        Message(RecordDict(records(c)), clients[c], "train", group_id=str(round_number))
        for c in chosen
    ]

    arrived = [  # in arrival order: with over-selection the first k good replies count
        m
        for m in grid.send_and_receive(messages, timeout=config.timeout)
        if m.metadata.src_node_id in node_to_client
    ]
    surplus = _surplus(arrived, k) if wanted > k else set()
    replies = sorted(arrived, key=lambda m: node_to_client[m.metadata.src_node_id])
    aggregation = strategy.start_round(params, round_number)
    outcomes: list[ClientOutcome] = []
    decoded: list[tuple[int, ClientUpdate]] = []  # (index in outcomes, update)
    answered: set[int] = set()
    for reply in replies:
        client_id = node_to_client[reply.metadata.src_node_id]
        outcome = ClientOutcome(
            client_id, reply.metadata.src_node_id, accepted=False, bytes_down=bytes_down
        )
        try:
            if client_id in answered:
                raise Rejected("duplicate reply (the client's first reply counts)")
            answered.add(client_id)
            outcome = replace(outcome, **client_report(reply))
            if id(reply) in surplus:
                raise Rejected(f"over-selected: {k} other replies arrived first")
            update = decode_reply(
                reply,
                params.size,
                codec=config.train.compression,
                codec_options=config.train.compression_options,
                declared=(declared or {}).get(client_id),
                max_examples=config.max_examples,
            )
            outcome = replace(
                outcome,
                num_examples=update.num_examples,
                train_loss=update.train_loss,
                seconds=update.seconds,
                bytes_up=update.bytes_up,
            )
            decoded.append((len(outcomes), update))
        except Rejected as exc:
            outcome = replace(outcome, reason=str(exc))
        outcomes.append(outcome)
    reasons = aggregation.offer_all([update for _, update in decoded])
    for (index, _), reason in zip(decoded, reasons, strict=True):
        outcomes[index] = replace(outcomes[index], accepted=reason is None, reason=reason)
    outcomes += [
        ClientOutcome(
            c,
            clients[c],
            accepted=False,
            reason="no reply before the timeout",
            bytes_down=bytes_down,
        )
        for c in chosen
        if c not in answered
    ]
    if not any(o.accepted for o in outcomes):
        reasons = "; ".join(f"client {o.client_id}: {o.reason}" for o in outcomes)
        raise RoundFailed(f"round {round_number}: no update was accepted ({reasons})")
    try:
        return aggregation.finish(), outcomes
    except AggregationError as exc:
        raise RoundFailed(f"round {round_number}: {exc}") from exc


def _surplus(arrived: list[Message], k: int) -> set[int]:
    """``id()`` of the good replies after the first ``k`` (over-selection keeps the first)."""
    good = [m for m in arrived if not m.has_error()]
    return {id(m) for m in good[k:]}


def run_federation(
    grid: Grid,
    config: FederationConfig,
    initial: np.ndarray,
    strategy: Strategy,
    evaluate_fn: EvaluateFn,
    on_round: OnRound | None = None,
    first_round: int = 1,
    before_round: BeforeRound | None = None,
    resume_state: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Run rounds ``first_round..config.num_rounds``; return the final global vector.

    ``resume_state``: the server state of the checkpoint a resumed run continues from (the
    strategy has loaded its part; an asynchronous run takes its in-flight clients from it).

    ``before_round(number, config)`` may return a changed config for that round on (an
    operator's ``set`` command) or raise ``StopRun``; ``on_round`` sees each finished round.
    """
    clients: Mapping[int, int] = {}
    declared: dict[int, int] = {}
    if config.directory is None:
        min_nodes = config.min_nodes or config.clients_per_round
        node_ids = wait_for_nodes(grid, min_nodes, config.connect_timeout)
        clients, declared = discover(grid, node_ids, timeout=config.timeout)
    if config.asynchrony is not None:
        from aggregator.asynchronous import run_async_federation

        return run_async_federation(
            grid, config, initial, strategy, evaluate_fn, on_round, first_round, clients,
            declared, before_round, resume_state,
        )
    params = np.asarray(initial, dtype=np.float32)
    for number in range(first_round, config.num_rounds + 1):
        if before_round is not None:
            config = before_round(number, config)
        if config.directory is not None:  # the known population: who is available now
            clients = config.directory(number)
        start = time.perf_counter()
        params, outcomes = run_round(grid, clients, params, number, config, strategy, declared)
        test_loss, test_accuracy = evaluate_fn(params)
        accepted = [o for o in outcomes if o.accepted]
        weight = sum(o.num_examples for o in accepted)
        train_loss = sum(o.train_loss * o.num_examples for o in accepted) / weight
        outcome = RoundOutcome(
            number=number,
            clients=outcomes,
            train_loss=train_loss,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            seconds=time.perf_counter() - start,
            params=params,
            epsilon=strategy.privacy_spent(),
            server_state=strategy.state_dict(),
        )
        if on_round is not None:
            on_round(outcome)
    return params
