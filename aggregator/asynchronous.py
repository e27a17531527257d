"""Asynchronous buffered aggregation (FedBuff: Nguyen et al., AISTATS 2022) on the round's pieces.

No barrier: ``concurrency`` clients train at once, each from the model version it was sent.
Each reply is decoded and validated exactly as in a synchronous round (``decode_reply``), its
staleness (server steps since its model) weights it, and it waits in a buffer; when
``buffer`` contributions are in, the strategy takes one server step — one ``RoundAggregation``
around the current model, so the rule, the server optimizer, clipping, DP and the norm guard
all apply — and the step is stored like a round. The client that just answered gets the
newest model at once.

A stale contribution is re-based onto the current model: ``current + w(s) * (local - base)``
(``aggregator.staleness``); a fresh one (s = 0) is offered unchanged, so with
``concurrency = buffer = clients`` and no latency the run is synchronous FedAvg bit for bit.

Time comes from a ``Courier`` (``aggregator.couriers``): in a simulation the reply of a message
is computed when it is sent and is due at the sender's simulated time plus the client's
simulated duration (so runs are deterministic for a seed on any backend); in a deployment
replies arrive when they arrive.

Federated evaluation (``config.evaluation``) runs after a due step, on a cohort drawn from the
clients idle at that moment (a device answers one message at a time: one still training
would answer only when done, holding the step up); see ``idle_cohort``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Message, RecordDict

from aggregator.collect.base import finish_round, train_records
from aggregator.couriers import Courier, LiveCourier, SimulatedCourier, TimedGrid
from aggregator.decode import client_report, decode_reply
from aggregator.evaluation import run_evaluation
from aggregator.round_types import (
    BeforeRound,
    ClientOutcome,
    EvaluateFn,
    FederationConfig,
    OnRound,
    RoundFailed,
    RoundOutcome,
)
from aggregator.staleness import rebase
from aggregator.strategies import Strategy
from aggregator.updates import ClientUpdate, Rejected
from fedcore.wire import vector_record

if TYPE_CHECKING:
    from flwr.serverapp import Grid



@dataclass
class _Contribution:
    base_version: int
    update: ClientUpdate
    outcome: ClientOutcome  # who sent it and what its reply said (device class, metrics)


class AsyncRun:
    """The state of one asynchronous run between server steps (see the module docstring)."""

    def __init__(
        self,
        grid: Grid,
        config: FederationConfig,
        initial: np.ndarray,
        strategy: Strategy,
        courier: Courier,
        first_step: int = 1,
        now: float = 0.0,
    ) -> None:
        assert config.asynchrony is not None
        self.grid, self.config, self.strategy, self.courier = grid, config, strategy, courier
        self.asynchrony = config.asynchrony
        self.version = first_step - 1
        self.params = np.asarray(initial, dtype=np.float32)
        self.bases: dict[int, np.ndarray] = {self.version: self.params}
        self.in_flight: dict[int, int] = {}  # client -> base version
        self.sent: dict[int, tuple[float, int]] = {}  # client -> (sent at, courier order)
        self.flying: dict[int, int] = {}  # node -> the client training on it
        self.busy: set[int] = set()  # training or buffered: not to be sent another model
        # who is available for the current model version (``offer``), sorted and as a set,
        # and how many of them are busy (kept as clients turn busy and idle)
        self.available: Mapping[int, int] = {}
        self.order: list[int] = []
        self.members: set[int] = set()
        self.busy_members = 0
        self.buffer: list[_Contribution] = []
        self.rejected: list = []  # ClientOutcomes waiting for the next step's record
        self.now = now
        self.dispatched = 0
        # per model version: its train records and the draw that picks idle clients for it
        self._version: tuple[int, Callable[[int], dict], np.random.Generator] | None = None

    # -- dispatch ---------------------------------------------------------------------------
    def offer(self, available: Mapping[int, int]) -> None:
        """The clients available for the next model version (``{client_id: node_id}``)."""
        self.available, self.order = available, sorted(available)
        self.members = set(self.order)
        self.busy_members = len(self.busy & self.members)

    @property
    def idle_count(self) -> int:
        """Available clients neither training nor buffered."""
        return len(self.order) - self.busy_members

    def _busy(self, client: int) -> None:
        if client not in self.busy:
            self.busy.add(client)
            self.busy_members += client in self.members

    def _idle(self, client: int) -> None:
        if client in self.busy:
            self.busy.remove(client)
            self.busy_members -= client in self.members

    def dispatch(self) -> None:
        """Fill the free training slots with idle clients of those offered, drawn from one
        stream per model version (seeded by the run's seed and the version: a run resumed
        from a step's checkpoint draws the same); when every idle client fits, all go, in
        order."""
        free = self.asynchrony.concurrency - len(self.in_flight)
        busy, order, clients = self.busy, self.order, self.available
        idle_count = self.idle_count
        if free <= 0 or idle_count <= 0:
            return
        step = self.version + 1
        if self._version is None or self._version[0] != step:
            record = vector_record(self.params)
            options = self.strategy.client_options
            self._version = (step, train_records(self.config, options, step, record),
                             np.random.default_rng([self.config.seed, 7, step]))
        _, records, rng = self._version
        if idle_count <= free:
            chosen = [c for c in order if c not in busy]
        else:  # draw without replacement; busy clients are few next to the available ones
            chosen, taken = [], set()
            while len(chosen) < free:
                pick = order[int(rng.integers(len(order)))]
                if pick not in busy and pick not in taken:
                    chosen.append(pick)
                    taken.add(pick)
        for client in chosen:
            self.dispatched += 1
            self._send(client, clients[client], self.version, records, self.now)

    def _send(self, client: int, node: int, base_version: int,
              records: Callable[[int], dict], now: float) -> None:
        self.in_flight[client] = base_version
        self.sent[client] = (now, getattr(self.courier, "sent", 0))
        self.flying[node] = client
        self._busy(client)
        message = Message(RecordDict(records(client)), node, "train",
                          group_id=str(base_version + 1))
        self.courier.send(message, now)

    # -- resume -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """What a resumed run needs to go on exactly: the clock, the draw counter, who is
        training from which model version (and those versions), for the checkpoint."""
        flying = sorted(self.in_flight, key=lambda c: self.sent[c][1])
        state = {
            "async.clock": np.array([self.now], dtype=np.float64),
            "async.counters": np.array([self.dispatched, getattr(self.courier, "sent", 0)],
                                       dtype=np.int64),
            "async.clients": np.array([[c, self.in_flight[c], self.sent[c][1]] for c in flying],
                                      dtype=np.int64).reshape(-1, 3),
            "async.sent_at": np.array([self.sent[c][0] for c in flying], dtype=np.float64),
        }
        for version in sorted(set(self.in_flight.values())):
            state[f"async.base.{version}"] = self.bases[version]
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], nodes: Mapping[int, int]) -> None:
        """Continue from ``state_dict``: the same clients train again from the same model
        versions, sent at the same simulated times in the same order (their replies are
        computed again, identically)."""

        if "async.clock" not in state:
            return
        self.now = float(state["async.clock"][0])
        self.dispatched, total = (int(v) for v in state["async.counters"])
        for key, value in state.items():
            if key.startswith("async.base."):
                self.bases[int(key.rsplit(".", 1)[1])] = np.asarray(value, dtype=np.float32)
        rows, sent_at = state["async.clients"], state["async.sent_at"]
        for (client, version, order), when in zip(rows.tolist(), sent_at.tolist(), strict=True):
            if client not in nodes or version not in self.bases:
                continue
            records = train_records(self.config, self.strategy.client_options, version + 1,
                                    vector_record(self.bases[version]))
            if isinstance(self.courier, SimulatedCourier):  # replies keep their first order
                self.courier.sent = order
            self._send(client, nodes[client], version, records, when)
        if isinstance(self.courier, SimulatedCourier):
            self.courier.sent = total

    # -- collect ----------------------------------------------------------------------------
    def collect(self, arrival: float, reply: Message, declared: Mapping[int, int]) -> None:
        """Validate one reply and buffer it, or record why not; a reply from a node with no
        client training on it (not ours, or a second reply) is ignored."""

        self.now = max(self.now, arrival)
        node = reply.metadata.src_node_id
        client = self.flying.pop(node, None)
        if client is None:
            return
        base_version = self.in_flight.pop(client)
        self.sent.pop(client, None)
        staleness = self.version - base_version  # steps behind (as it will be at the next step)
        report = client_report(reply)
        outcome = ClientOutcome(
            client, node, accepted=False, device_class=report.get("device_class"),
            metrics={**report.get("metrics", {}), "staleness": float(staleness)},
        )
        try:
            limit = self.asynchrony.max_staleness
            if limit is not None and staleness > limit:
                raise Rejected(f"stale: trained from step {base_version}, {staleness} steps "
                               f"behind (max_staleness {limit})")
            update = decode_reply(
                reply,
                self.params.size,
                codec=self.config.train.compression,
                codec_options=self.config.train.compression_options,
                declared=declared.get(client),
                max_examples=self.config.max_examples,
            )
        except Rejected as exc:
            self.rejected.append(replace(outcome, reason=str(exc)))
            self._idle(client)
            return
        self.buffer.append(_Contribution(base_version, update, outcome))

    # -- aggregate --------------------------------------------------------------------------
    def step(self) -> tuple[np.ndarray, list]:
        """One server step over the buffer; return the new model and the step's outcomes."""

        number = self.version + 1
        aggregation = self.strategy.start_round(self.params, number)
        offered: list[ClientUpdate] = []
        outcomes: list = []
        for c in self.buffer:
            staleness = self.version - c.base_version
            weight = self.asynchrony.staleness.weight(staleness)
            update = c.update
            if staleness > 0:
                update = rebase(update, self.bases[c.base_version], weight)
            offered.append(update)
            outcomes.append(replace(
                c.outcome, num_examples=update.num_examples, train_loss=update.train_loss,
                seconds=update.seconds, bytes_up=update.bytes_up,
                metrics={**c.outcome.metrics, "staleness": float(staleness),
                         "staleness_weight": weight},
            ))
        reasons = aggregation.offer_all(offered)
        outcomes = [replace(o, accepted=r is None, reason=r)
                    for o, r in zip(outcomes, reasons, strict=True)]
        outcomes += self.rejected
        for c in self.buffer:
            self._idle(c.outcome.client_id)
        self.buffer, self.rejected = [], []
        new = finish_round(aggregation, outcomes, f"step {number}", "contribution")
        self.version, self.params = number, new
        self.bases[number] = new
        self._prune()
        return new, outcomes

    def _prune(self) -> None:
        """Forget model versions no in-flight or buffered client trained from."""
        keep = set(self.in_flight.values()) | {c.base_version for c in self.buffer}
        keep.add(self.version)
        for version in [v for v in self.bases if v not in keep]:
            del self.bases[version]


def idle_cohort(available: Mapping[int, int], order: list[int],
                busy: set[int]) -> dict[int, int]:
    """The available clients (``{client_id: node_id}``, ``order`` their sorted ids) that are
    neither training nor waiting in the buffer: who may evaluate a step without holding it up.
    Right after a step its contributors are idle, so the cohort is never empty."""
    return {c: available[c] for c in order if c not in busy}


def run_async_federation(
    grid: Grid,
    config: FederationConfig,
    initial: np.ndarray,
    strategy: Strategy,
    evaluate_fn: EvaluateFn | None,
    on_round: OnRound | None = None,
    first_round: int = 1,
    clients: Mapping[int, int] | None = None,
    declared: Mapping[int, int] | None = None,
    before_round: BeforeRound | None = None,
    resume_state: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Run server steps ``first_round..config.num_rounds`` asynchronously; each step is
    reported to ``on_round`` as a ``RoundOutcome`` (``metrics["sim_clock_s"]``: the time of
    the step, simulated when the grid is simulated)."""

    assert config.asynchrony is not None
    courier: Courier = (
        SimulatedCourier(grid)
        if isinstance(grid, TimedGrid)
        else LiveCourier(grid, timeout=config.timeout)
    )
    run = AsyncRun(grid, config, initial, strategy, courier, first_step=first_round)
    directory: Callable[[int], Mapping[int, int]] = (
        config.directory if config.directory is not None else (lambda _: clients or {})
    )
    if resume_state:
        run.load_state_dict(dict(resume_state), directory(first_round))
    last_step_at = run.now
    wall = time.perf_counter()
    asked, listed = run.version, -1
    while run.version < config.num_rounds:
        if before_round is not None and asked <= run.version:  # once per step: pause, set
            run.config = config = before_round(run.version + 1, config)
            asked = run.version + 1
        if listed != run.version:  # who is available: once per model version
            run.offer(directory(run.version + 1))
            listed = run.version
        run.dispatch()
        got = courier.receive()
        if got is not None:
            run.collect(*got, declared or {})
        enough = len(run.buffer) >= run.asynchrony.buffer
        idle = run.idle_count > 0
        stuck = got is None or (not run.in_flight and not idle)
        if not enough and not (stuck and run.buffer):
            if got is None and not run.buffer:

                raise RoundFailed(f"step {run.version + 1}: no client could be reached")
            continue
        params, outcomes = run.step()
        test_loss, test_accuracy = evaluate_fn(params) if evaluate_fn else (None, None)
        evaluation = None
        if config.evaluation is not None and config.evaluation.due(run.version,
                                                                   config.num_rounds):
            evaluation = run_evaluation(
                grid, idle_cohort(run.available, run.order, run.busy), params, run.version,
                config.evaluation, config.seed, config.timeout, max_examples=config.max_examples,
                declared=declared, of=len(run.order),
            )  # fmt: skip
        accepted = [o for o in outcomes if o.accepted]
        weight = sum(o.num_examples for o in accepted) or 1
        staleness = [o.metrics["staleness"] for o in accepted]
        outcome = RoundOutcome(
            number=run.version,
            clients=outcomes,
            train_loss=sum((o.train_loss or 0.0) * o.num_examples for o in accepted) / weight,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            seconds=time.perf_counter() - wall,
            params=params,
            epsilon=strategy.privacy_spent(),
            server_state={**strategy.state_dict(), **run.state_dict()},
            metrics={
                "sim_clock_s": run.now,
                "sim_round_s": run.now - last_step_at,
                "staleness_mean": float(np.mean(staleness)) if staleness else 0.0,
                "staleness_max": float(max(staleness, default=0.0)),
            },
            evaluation=evaluation,
        )
        last_step_at, wall = run.now, time.perf_counter()
        if on_round is not None:
            on_round(outcome)
    return run.params
