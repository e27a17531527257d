"""Collect through SecAgg+: three to five ``send_and_receive`` stages, one `SecureSum` out.

Each stage sends every live client its message (types in ``fedcore.secagg.messages.TYPES``),
files the replies with the ``SecAggServer`` (an error reply, a malformed reply or no reply
drops that client, with the reason), and closes the stage. The advertise stage is skipped when
every participant advertised a key pair for this round earlier in the run: the key book lives
in the collector, one per run. The masked-input stage carries the global vector and the train
instructions, so training happens there; the reply is the masked uint32 vector. With
over-selection the first ``keep`` masked inputs to arrive are summed and the others count as
dropped (their masks are removed like any dropout's). The decoded sum is the example-weighted
mean update, which the strategy's rule takes in place of the individual updates (a rule that
can: ``aggregator.strategies.protocols.SummableRule``) and its server optimizer steps on, as
in a plain round. The norm guard cannot judge updates the server never sees: what bounds
each one is the clip every client applies per coordinate before masking, which the decoded
sum is checked against (``SecAggServer.checked_mean``); the round records it
(``round_types.SECAGG_CLIP``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from aggregator.collect.base import Collected, RoundPlan, SecureSum
from aggregator.decode import client_report
from aggregator.round_types import ClientOutcome, RoundFailed
from aggregator.secagg.config import SecAggConfig
from aggregator.secagg.keybook import KeyBook
from aggregator.secagg.server import SecAggServer
from aggregator.strategies import Strategy, build_strategy, known_strategies
from fedcore import protocol
from fedcore.secagg import messages
from fedcore.secagg.errors import Aborted, ProtocolViolation

REPLIES = {
    "advertise": messages.KeysReply,
    "share": messages.ShareReply,
    "masked": messages.MaskReply,
    "check": messages.CheckReply,
    "unmask": messages.UnmaskReply,
}


class SecAggAborted(RoundFailed):
    """A secure-aggregation round could not produce a correct sum and was abandoned."""


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


class SecAggCollector:
    """SecAgg+ rounds of one run (the advertised keys carry across its rounds)."""

    def __init__(self, settings: SecAggConfig) -> None:
        self.settings = settings
        self.book = KeyBook()

    def check(self, strategy: Strategy) -> None:
        """``RoundFailed`` unless the strategy can take a sum in place of the updates (and,
        when the run requires identities, there is a CA to check them against)."""
        if self.settings.require_identities and self.settings.identities is None:
            raise RoundFailed(
                "secagg.identities = true, but the server has no CA to check device "
                "identities against (fedcore server --certificates DIR)"
            )
        if not strategy.takes_sums:
            raise RoundFailed(
                f"strategy {strategy.name!r} needs individual updates; secure aggregation "
                f"works with strategies whose rule takes a sum ({', '.join(secure_strategies())})"
            )

    def collect(self, plan: RoundPlan) -> Iterator[Collected]:
        """Run the protocol's stages; yield one `SecureSum` (``SecAggAborted`` if the sum
        cannot be had: too many dropouts, or one that honest clients could not give)."""
        selection, number = plan.selection, plan.number
        chosen = selection.chosen
        nodes = [selection.nodes[c] for c in chosen]
        by_node = {selection.nodes[c]: c for c in chosen}
        n = len(nodes)
        if n < 2:
            raise SecAggAborted(f"round {number}: secure aggregation needs 2 clients, had {n}")
        surplus = (n - selection.keep) / n  # over-selected: these drop out on purpose
        try:
            params = self.settings.params_for(n, extra_dropout=surplus)
        except ValueError as exc:
            raise SecAggAborted(f"round {number}: {exc}") from None
        server = SecAggServer(
            nodes,
            params,
            self.settings.encoding_for(n),
            plan.params.size,
            number,
            backend=plan.backend,
            book=self.book,
            identities=self.settings.identities,
        )
        bytes_up = dict.fromkeys(nodes, 0)
        seconds: dict[int, float] = {}
        reports: dict[int, dict[str, Any]] = {}
        try:
            for stage in server.stages[:-1]:
                requests = server.requests()
                if not requests:  # every client advertised its keys in an earlier round
                    server.close_stage()
                    continue
                outgoing = [
                    Message(
                        messages.to_content(
                            request, **(plan.records(by_node[node]) if stage == "masked" else {})
                        ),
                        node,
                        messages.TYPES[stage],
                        group_id=str(number),
                    )
                    for node, request in requests.items()
                ]
                summed = 0
                for reply in plan.grid.send_and_receive(outgoing, timeout=plan.config.timeout):
                    node = reply.metadata.src_node_id
                    if node not in requests:
                        continue
                    if reply.has_error():
                        server.fail(node, f"client error: {reply.error.reason}")
                        continue
                    if stage == "masked" and summed >= selection.keep:
                        server.fail(node, f"over-selected: {selection.keep} others arrived first")
                        continue
                    try:
                        parsed = messages.from_content(REPLIES[stage], reply.content)
                        size = record_bytes(reply.content)
                    except ProtocolViolation as exc:
                        server.fail(node, f"rejected {stage} reply: {exc}")
                        continue
                    except Exception as exc:  # nothing a client sends may end the round
                        text = f"rejected {stage} reply: {type(exc).__name__}: {exc}"
                        server.fail(node, text[:300])
                        continue
                    bytes_up[node] += size
                    server.receive(node, parsed)
                    if stage == "masked" and server.index[node] in server.replied:
                        took = _seconds(reply.content)
                        if took is not None:
                            seconds[node] = took
                        reports[node] = client_report(reply)
                        summed += 1
                server.close_stage()
            total = server.result()
            summed_ids = server.survivors["masked"]
            most = [plan.most_examples(by_node[nodes[i - 1]]) for i in sorted(summed_ids)]
            mean_update, weight, loss = server.checked_mean(total, most)
        except Aborted as exc:
            detail = "; ".join(
                f"client {by_node[nodes[i - 1]]} at {d.stage}: {d.reason}"
                for i, d in sorted(server.dropouts.items())[:10]
            )
            raise SecAggAborted(f"round {number}: {exc} (dropouts: {detail or 'none'})") from exc

        mean_examples = max(1, round(weight / len(summed_ids)))
        outcomes: list[ClientOutcome] = []
        for client_id, node in zip(chosen, nodes, strict=True):
            index = server.index[node]
            outcome = plan.outcome(client_id, bytes_up=bytes_up[node])
            outcome = replace(outcome, **reports.get(node, {}))
            if index in summed_ids:  # its update is in the sum; only round means are known
                outcome = replace(
                    outcome,
                    accepted=True,
                    num_examples=mean_examples,
                    train_loss=loss,
                    seconds=seconds.get(node),
                )
            else:
                drop = server.dropouts[index]
                reason = f"secure aggregation: dropped at stage {drop.stage}: {drop.reason}"
                outcome = replace(outcome, reason=reason)
            outcomes.append(outcome)
        yield SecureSum(mean_update, weight, outcomes, server.encoding.clip)


def secure_strategies() -> tuple[str, ...]:
    """The known strategies whose rule takes a sum (what SecAgg+ can run)."""
    found = []
    for name in known_strategies():
        try:
            if build_strategy(name).takes_sums:
                found.append(name)
        except Exception:  # noqa: BLE001 - one that cannot be built here is not offered
            continue
    return tuple(found)
