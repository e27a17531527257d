"""One secure-aggregation round on Flower's ``Grid``: three or four ``send_and_receive`` calls.

``run_round`` in ``aggregator.rounds`` hands over here when the run has a ``SecAggConfig``.
Each stage sends every live client its message (types in ``fedcore.secagg.messages.TYPES``),
files the replies with the ``SecAggServer`` (an error reply, a malformed reply or no reply
drops that client, with the reason), and closes the stage. The advertise stage is skipped when
every participant advertised a key pair for this round earlier in the run (the key book is
kept per grid and run). The masked-input stage carries the
global vector and the train instructions, so training happens there; the reply is the masked
uint32 vector. The decoded sum is the example-weighted mean update, which the strategy's
server optimizer turns into the next global model, as in plain FedAvg.

Only strategies whose rule is the (example-)weighted mean work under secure aggregation:
fedavg, fedprox, fedavgm and the FedOpt family. Robust rules need the individual updates
and central DP clips each one, which is exactly what the server may no longer see.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from aggregator.rounds import (
    ClientOutcome,
    FederationConfig,
    RoundFailed,
    sample_clients,
    train_records,
)
from aggregator.secagg.config import SecAggConfig
from aggregator.secagg.server import STAGES, KeyBook, SecAggServer
from aggregator.strategies import Strategy, WeightedMean
from aggregator.updates import Rejected, check_model
from fedcore import protocol
from fedcore.secagg import messages
from fedcore.secagg.errors import Aborted, ProtocolViolation
from fedcore.wire import vector_record

REPLIES = {
    "advertise": messages.KeysReply,
    "share": messages.ShareReply,
    "masked": messages.MaskReply,
    "unmask": messages.UnmaskReply,
}


class SecAggAborted(RoundFailed):
    """A secure-aggregation round could not produce a correct sum and was abandoned."""


_books: weakref.WeakKeyDictionary[Any, tuple[int, KeyBook]] = weakref.WeakKeyDictionary()


def key_book(grid: Any) -> KeyBook:
    """The keys advertised ahead in this grid's run (a fresh book for a new run)."""
    run_id = grid.run.run_id
    entry = _books.get(grid)
    if entry is None or entry[0] != run_id:
        entry = _books[grid] = (run_id, KeyBook())
    return entry[1]


def check_strategy(strategy: Strategy) -> None:
    """Raise ``RoundFailed`` unless the strategy only needs the weighted sum of updates."""
    rule = strategy.make_rule(1, strategy.backend)
    linear = type(rule) is WeightedMean and not rule.uniform
    if not linear or strategy.privacy is not None:
        raise RoundFailed(
            f"strategy {strategy.name!r} needs individual updates; secure aggregation supports "
            "fedavg, fedprox, fedavgm, fedadam, fedyogi and fedadagrad"
        )


def record_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: array data, byte strings, 8 per number."""
    size = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            size += sum(len(a.data) for a in record.values())
        elif isinstance(record, ConfigRecord):
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                size += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return size


def _seconds(content: RecordDict) -> float | None:
    """The training time a reply reports, if it is a finite number >= 0."""
    metrics = protocol.record(content, protocol.METRICS, MetricRecord)
    value = None if metrics is None else metrics.get("seconds")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = float(value)
        return value if math.isfinite(value) and value >= 0 else None
    return None


def run_secagg_round(
    grid: Any,
    clients: dict[int, int],
    params: np.ndarray,
    round_number: int,
    config: FederationConfig,
    strategy: Strategy,
    declared: Mapping[int, int] | None = None,
) -> tuple[np.ndarray, list[ClientOutcome]]:
    """Run one SecAgg+ round; return the new global vector and each client's outcome.

    A reply that cannot be parsed or checked drops its client with the reason; a sum that
    cannot be decoded, lies outside the bounds clipping implies, or gives a non-finite model
    aborts the round (``SecAggAborted``): the previous model stays."""
    settings = config.secagg or SecAggConfig()
    check_strategy(strategy)
    if config.train.compression != "none":
        raise RoundFailed("secure aggregation sends dense masked vectors: set compression none")
    chosen = sample_clients(clients, config.clients_per_round, config.seed, round_number)
    nodes = [clients[c] for c in chosen]
    n = len(nodes)
    encoding = settings.encoding_for(n)
    server = SecAggServer(
        nodes,
        settings.params_for(n),
        encoding,
        params.size,
        round_number,
        backend=strategy.backend,
        book=key_book(grid),
    )
    global_record = vector_record(params)
    bytes_down = sum(len(a.data) for a in global_record.values())
    by_node = {clients[c]: c for c in chosen}

    records = train_records(config, strategy, round_number, global_record)

    def extra(node: int) -> dict[str, Any]:
        return records(by_node[node])

    bytes_up = dict.fromkeys(nodes, 0)
    seconds: dict[int, float] = {}
    try:
        for stage in STAGES[:4]:
            requests = server.requests()
            if not requests:  # every client advertised its keys in an earlier round
                server.close_stage()
                continue
            outgoing = [
                Message(
                    messages.to_content(request, **(extra(node) if stage == "masked" else {})),
                    node,
                    messages.TYPES[stage],
                    group_id=str(round_number),
                )
                for node, request in requests.items()
            ]
            for reply in grid.send_and_receive(outgoing, timeout=config.timeout):
                node = reply.metadata.src_node_id
                if node not in requests:
                    continue
                if reply.has_error():
                    server.fail(node, f"client error: {reply.error.reason}")
                    continue
                try:
                    parsed = messages.from_content(REPLIES[stage], reply.content)
                    size = record_bytes(reply.content)
                except ProtocolViolation as exc:
                    server.fail(node, f"rejected {stage} reply: {exc}")
                    continue
                except Exception as exc:  # nothing a client sends may end the round
                    server.fail(node, f"rejected {stage} reply: {type(exc).__name__}: {exc}"[:300])
                    continue
                bytes_up[node] += size
                took = _seconds(reply.content)
                if took is not None:
                    seconds[node] = took
                server.receive(node, parsed)
            server.close_stage()
        total = server.result()
        summed = server.survivors["masked"]
        cap = config.max_examples
        most = [min(cap, (declared or {}).get(by_node[nodes[i - 1]], cap)) for i in sorted(summed)]
        mean_update, weight, loss = server.checked_mean(total, most)
        with np.errstate(over="ignore", invalid="ignore"):
            aggregate = (params.astype(np.float64) + mean_update).astype(np.float32)
            backend = strategy.backend
            new = strategy.server_opt.step(
                backend.asarray(params), backend.asarray(aggregate), round_number
            )
            new_params = np.asarray(backend.to_numpy(new), dtype=np.float32)
        try:
            check_model(new_params)
        except Rejected as exc:
            raise Aborted(str(exc)) from None
    except Aborted as exc:
        detail = "; ".join(
            f"client {by_node[nodes[i - 1]]} at {d.stage}: {d.reason}"
            for i, d in sorted(server.dropouts.items())[:10]
        )
        raise SecAggAborted(f"round {round_number}: {exc} (dropouts: {detail or 'none'})") from exc

    mean_examples = max(1, round(weight / len(summed)))
    outcomes = []
    for client_id, node in zip(chosen, nodes, strict=True):
        index = server.index[node]
        common = {"bytes_up": bytes_up[node], "bytes_down": bytes_down}
        if index in summed:  # its update is in the sum; only round means are known
            outcome = ClientOutcome(
                client_id, node, True, mean_examples, loss, seconds.get(node), **common
            )
        else:
            drop = server.dropouts[index]
            reason = f"secure aggregation: dropped at stage {drop.stage}: {drop.reason}"
            outcome = ClientOutcome(client_id, node, False, reason=reason, **common)
        outcomes.append(outcome)
    return new_params, outcomes
