"""SecAgg+ rounds without a transport, through the round's own collector (tests, scale benchmark).

Nothing here drives the protocol: ``aggregator.collect.secagg.SecAggCollector`` runs its stages
exactly as in a simulated or deployed round. `DirectGrid` only stands in for the network: it
hands each stage message straight to the clients' own stage handlers
(``client_runtime.secagg_app``), lazily, so the server folds each masked vector in before the
next client computes its own and 1,000 clients x 1M parameters take a few vectors of memory.
Client i (node id ``BASE + i``) trains to ``global + update_of(i)``. ``drop[stage]`` names the
clients (0-based) that never answer that stage; ``tamper(stage, i, reply)`` may replace client
i's parsed reply before the server sees it. Each client's handler time and reply bytes are
measured; the server's time is the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from uuid import uuid4

import numpy as np
from flwr.app import Message
from flwr.clientapp import ClientApp

from aggregator.backend import select_backend
from aggregator.collect import RoundPlan, SecureSum
from aggregator.collect.secagg import REPLIES, SecAggAborted, SecAggCollector, record_bytes
from aggregator.round_types import ClientOutcome, FederationConfig
from aggregator.secagg import SecAggConfig
from aggregator.select import Selection
from client_runtime.secagg_app import CredentialsFn, TrainOutput, register_secagg
from fedcore import protocol
from fedcore.secagg import messages
from fedcore.settings import TrainSettings
from fedcore.wire import read_vector
from simulations.runtimes.inprocess import InProcessGrid

BASE = 1000  # client i is node BASE + i
UpdateFn = Callable[[int], tuple[np.ndarray, float, float]]  # i -> (update, examples, loss)
Tamper = Callable[[str, int, object], object]  # (stage, i, parsed reply) -> reply
STAGE_OF = {message_type: stage for stage, message_type in messages.TYPES.items()}


@dataclass
class DirectRound:
    """The outcome of one round: the secure sum (None if the round was abandoned, then
    ``error`` says why), each client's outcome, and the costs per side."""

    result: SecureSum | None
    error: SecAggAborted | None
    server_seconds: float
    client_seconds: np.ndarray  # per client, summed over its stages
    client_bytes: np.ndarray  # per client, reply payload bytes
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def outcomes(self) -> list[ClientOutcome]:
        """Every client's outcome (empty when the round was abandoned)."""
        return [] if self.result is None else self.result.outcomes

    def summed(self) -> list[int]:
        """The clients (0-based) whose updates are in the sum."""
        return sorted(o.node_id - BASE for o in self.outcomes if o.accepted)


class DirectGrid(InProcessGrid):
    """``n`` in-process clients whose ``send_and_receive`` answers one message at a time."""

    def __init__(
        self,
        n: int,
        update_of: UpdateFn,
        drop: Mapping[str, set[int]] | None = None,
        tamper: Tamper | None = None,
        credentials: CredentialsFn | None = None,
    ) -> None:
        app = ClientApp()
        register_secagg(app, self._train, credentials=credentials)
        super().__init__(app, n, base=BASE)
        self.update_of, self.drop, self.tamper = update_of, drop or {}, tamper
        self.client_seconds = np.zeros(n)
        self.client_bytes = np.zeros(n, dtype=np.int64)
        self.stage_spans: dict[str, list[float]] = {}  # stage -> [start, end of its replies]

    def _train(self, msg: Message, context: object) -> TrainOutput:
        update, examples, loss = self.update_of(msg.metadata.dst_node_id - BASE)
        base = read_vector(msg.content.array_records[protocol.GLOBAL])
        return TrainOutput(base + update, examples, loss, 0.0)

    def send_and_receive(
        self, messages_out: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Each message's reply, computed when the collector asks for it."""
        outgoing = list(messages_out)
        stage = STAGE_OF[outgoing[0].metadata.message_type] if outgoing else "none"
        span = self.stage_spans.setdefault(stage, [time.perf_counter(), 0.0])
        for msg in outgoing:
            i = msg.metadata.dst_node_id - BASE
            if i in self.drop.get(stage, ()):
                continue
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as a transport would
            tick = time.perf_counter()
            reply = self._deliver(msg)
            self.client_seconds[i] += time.perf_counter() - tick
            if self.tamper is not None and not reply.has_error():
                parsed = messages.from_content(REPLIES[stage], reply.content)
                reply = Message(messages.to_content(self.tamper(stage, i, parsed)), reply_to=msg)
            self.client_bytes[i] += record_bytes(reply.content)
            yield reply
        span[1] = time.perf_counter()


def run_direct(
    n: int,
    vector_size: int,
    update_of: UpdateFn,
    settings: SecAggConfig,
    drop: Mapping[str, set[int]] | None = None,
    tamper: Tamper | None = None,
    credentials: CredentialsFn | None = None,
) -> DirectRound:
    """One SecAgg+ round among clients 0..n-1 (all of them chosen, every one counted), from a
    zero global vector of ``vector_size``; see the module docstring. ``credentials``: the
    clients' identities (with ``settings.identities``: the round runs the consistency check)."""
    grid = DirectGrid(n, update_of, drop, tamper, credentials)
    train = protocol.TrainInstructions(1, protocol.ModelSpec("direct"), TrainSettings(), 0)
    config = FederationConfig(1, n, train, seed=0, secagg=settings)
    selection = Selection(list(range(n)), {i: BASE + i for i in range(n)}, keep=n)
    zero = np.zeros(vector_size, np.float32)
    plan = RoundPlan(grid, selection, zero, 1, config, backend=select_backend("cpu"))
    start = time.perf_counter()
    result: SecureSum | None = None
    error: SecAggAborted | None = None
    try:
        [collected] = list(SecAggCollector(settings).collect(plan))
        assert isinstance(collected, SecureSum)
        result = collected
    except SecAggAborted as exc:  # reported with the costs so far
        error = exc
    total = time.perf_counter() - start
    stages = {stage: end - begin for stage, (begin, end) in grid.stage_spans.items()}
    last_end = max((end for _, end in grid.stage_spans.values()), default=start)
    stages["result"] = start + total - last_end  # unmasking and decoding the sum
    server = total - float(grid.client_seconds.sum())
    return DirectRound(result, error, server, grid.client_seconds, grid.client_bytes, stages)
