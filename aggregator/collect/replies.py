"""Collect train replies: one ``send_and_receive``, each reply decoded and validated.

`PlainCollector` expects the dense local model back; `CompressedCollector` the codec's
encoding of ``local - global`` with exactly the codec and options the server asked for
(``fedcore.compression``). Both keep, with over-selection, the first ``keep`` good replies to
arrive and judge replies in client order, so a run does not depend on arrival order otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from flwr.app import Message, RecordDict

from aggregator.collect.base import Collected, Contribution, Rejection, RoundPlan
from aggregator.decode import client_report, decode_reply
from aggregator.strategies import Strategy
from aggregator.updates import ClientUpdate, Rejected


class PlainCollector:
    """Replies carry the client's dense local model."""

    codec: str = "none"
    codec_options: Mapping[str, Any] = MappingProxyType({})

    def check(self, strategy: Strategy) -> None:
        """Every strategy takes individual updates."""

    def decode(self, reply: Message, plan: RoundPlan, client_id: int) -> ClientUpdate:
        """The reply's update, validated (``Rejected`` with the reason otherwise)."""
        return decode_reply(
            reply,
            plan.params.size,
            codec=self.codec,
            codec_options=dict(self.codec_options),
            declared=plan.declared.get(client_id),
            max_examples=plan.config.max_examples,
        )

    def collect(self, plan: RoundPlan) -> Iterator[Collected]:
        """Send every selected client its train message; yield each reply's contribution or
        rejection (client order), then the clients that did not answer."""
        selection, number = plan.selection, plan.number
        node_to_client = {node: c for c, node in selection.nodes.items()}
        messages = [
            Message(RecordDict(plan.records(c)), selection.nodes[c], "train", group_id=str(number))
            for c in selection.chosen
        ]
        arrived = [  # in arrival order: with over-selection the first k good replies count
            m
            for m in plan.grid.send_and_receive(messages, timeout=plan.config.timeout)
            if m.metadata.src_node_id in node_to_client
        ]
        keep = selection.keep
        surplus = _surplus(arrived, keep) if selection.over_selected else set()
        answered: set[int] = set()
        for reply in sorted(arrived, key=lambda m: node_to_client[m.metadata.src_node_id]):
            client_id = node_to_client[reply.metadata.src_node_id]
            outcome = plan.outcome(client_id)
            try:
                if client_id in answered:
                    raise Rejected("duplicate reply (the client's first reply counts)")
                answered.add(client_id)
                outcome = replace(outcome, **client_report(reply))
                if id(reply) in surplus:
                    raise Rejected(f"over-selected: {keep} other replies arrived first")
                update = self.decode(reply, plan, client_id)
            except Rejected as exc:
                yield Rejection(replace(outcome, reason=str(exc)))
                continue
            outcome = replace(
                outcome,
                num_examples=update.num_examples,
                train_loss=update.train_loss,
                seconds=update.seconds,
                bytes_up=update.bytes_up,
            )
            yield Contribution(update, outcome)
        for client_id in selection.chosen:
            if client_id not in answered:
                yield Rejection(plan.outcome(client_id, reason="no reply before the timeout"))


class CompressedCollector(PlainCollector):
    """Replies carry a compressed ``local - global`` (the codec the round asked for)."""

    def __init__(self, codec: str, codec_options: Mapping[str, Any]) -> None:
        self.codec, self.codec_options = codec, MappingProxyType(dict(codec_options))


def _surplus(arrived: list[Message], k: int) -> set[int]:
    """``id()`` of the good replies after the first ``k`` (over-selection keeps the first)."""
    good = [m for m in arrived if not m.has_error()]
    return {id(m) for m in good[k:]}
