"""Federated evaluation: sampled clients evaluate the global model on their own test split.

Every ``every`` rounds, ``fraction`` of the known clients (seeded, so a resumed run asks the
same ones) get an ``evaluate`` message with the global model and the evaluation settings
(the model, the loss and ``local_test``: the share each client holds out of its examples,
see ``fedcore.split.local_split``). Each reply is a ``MetricRecord`` of ``num_examples``,
``loss`` and ``metric`` (the loss's metric: accuracy or MAE); it is validated like a training
reply (finite, in range, no second reply) and a bad one is rejected with its reason, never
raising out of the round. Replies are plain metrics, so this works the same under SecAgg+.

The server keeps every client's result and reports the example-weighted mean and the spread
over clients: p10, median, p90 and the worst decile (the mean of the worst tenth of clients).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedcore import protocol
from fedcore.wire import vector_record

__all__ = [
    "ClientEvaluation",
    "EvaluationConfig",
    "FederatedEvaluation",
    "evaluation_sample",
    "run_evaluation",
]

EVALUATE = "evaluate"  # the message type


@dataclass(frozen=True)
class EvaluationConfig:
    """How often and on how many clients to evaluate, and what the clients are told."""

    every: int = 1
    fraction: float = 1.0
    local_test: float = 0.2
    model: protocol.ModelSpec | None = None
    loss: str = "cross_entropy"
    metric: str = "accuracy"
    server: bool = True  # also evaluate on the server's test set (when it has one)

    def due(self, round_number: int, last_round: int) -> bool:
        """True in rounds ``every, 2*every, ...`` and always in the last one."""
        return round_number % self.every == 0 or round_number == last_round

    def to_config(self) -> dict[str, Any]:
        """The ``ConfigRecord`` values an evaluate message carries."""
        assert self.model is not None
        return {"model": self.model.key(), "loss": self.loss, "local_test": self.local_test}


@dataclass(frozen=True)
class ClientEvaluation:
    """One client's evaluation of the global model on its local test split."""

    client_id: int
    num_examples: int
    loss: float
    metric: float


@dataclass
class FederatedEvaluation:
    """One round's federated evaluation: each client's result, rejections, and the summary."""

    metric: str
    clients: list[ClientEvaluation] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        """Weighted means of loss and metric, and the metric's spread over clients."""
        if not self.clients:
            return {}
        n = np.array([c.num_examples for c in self.clients], dtype=np.float64)
        loss = np.array([c.loss for c in self.clients], dtype=np.float64)
        metric = np.array([c.metric for c in self.clients], dtype=np.float64)
        p10, median, p90 = np.percentile(metric, [10, 50, 90])
        worst_first = np.sort(metric) if self.metric == "accuracy" else -np.sort(-metric)
        decile = worst_first[: max(1, math.ceil(len(metric) / 10))]
        return {
            "loss": float(np.dot(n, loss) / n.sum()),
            "metric": float(np.dot(n, metric) / n.sum()),
            "p10": float(p10),
            "median": float(median),
            "p90": float(p90),
            "worst_decile": float(decile.mean()),
            "clients": float(len(self.clients)),
            "examples": float(n.sum()),
        }

    def to_json(self) -> dict[str, Any]:
        """Plain data for the store (``from_json`` reads it back)."""
        return {
            "metric": self.metric,
            "summary": self.summary,
            "clients": [[c.client_id, c.num_examples, c.loss, c.metric] for c in self.clients],
            "rejected": {str(k): v for k, v in self.rejected.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FederatedEvaluation:
        """Inverse of ``to_json``."""
        clients = [ClientEvaluation(int(c), int(n), float(lo), float(m))
                   for c, n, lo, m in data.get("clients", [])]
        rejected = {int(k): str(v) for k, v in data.get("rejected", {}).items()}
        return cls(str(data.get("metric", "accuracy")), clients, rejected)


def evaluation_sample(client_ids: list[int], fraction: float, seed: int,
                      round_number: int, of: int | None = None) -> list[int]:
    """``ceil(fraction * n)`` (at least one, at most all) distinct ``client_ids``, reproducibly
    per round; ``n`` is ``of`` when the ids are a part of the clients the fraction is of (an
    asynchronous step's idle ones), else their number."""
    ids = sorted(client_ids)
    if not ids:
        return []
    k = min(len(ids), max(1, math.ceil(fraction * (of or len(ids)))))
    rng = np.random.default_rng([seed, round_number, 0xE7A1])
    return sorted(int(i) for i in rng.choice(ids, size=k, replace=False))


def _parse_reply(reply: Message, max_examples: int = 2**31,
                 declared: int | None = None) -> tuple[int, float, float]:
    """``(num_examples, loss, metric)`` of an evaluate reply; ``ValueError`` says what is bad
    (a count above ``max_examples`` or above what the client ``declared`` it holds too)."""
    if reply.has_error():
        raise ValueError(f"client error: {reply.error.reason}")
    metrics = protocol.record(reply.content, protocol.METRICS, MetricRecord)
    if metrics is None:
        raise ValueError(f"reply without a {protocol.METRICS!r} metric record")
    values = {}
    for key in ("num_examples", "loss", "metric"):
        value = metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} missing or not a number")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:  # an integer beyond float range
            finite = False
        if not finite:
            raise ValueError(f"{key} is not finite")
        values[key] = value
    n = values["num_examples"]
    if not isinstance(n, int) or not 0 < n <= max_examples:
        raise ValueError(f"num_examples must be a positive integer <= {max_examples}, got {n!r}")
    if declared is not None and n > declared:
        raise ValueError(f"num_examples {n} is more than the {declared} the client declared")
    return n, float(values["loss"]), float(values["metric"])


def run_evaluation(
    grid: Grid,
    clients: dict[int, int],
    params: np.ndarray,
    round_number: int,
    config: EvaluationConfig,
    seed: int,
    timeout: float | None = None,
    *,
    max_examples: int = 2**31,
    declared: Mapping[int, int] | None = None,
    of: int | None = None,
) -> FederatedEvaluation:
    """Ask a sample of ``clients`` (``{client_id: node_id}``) to evaluate ``params``; each
    reply's count is checked against ``max_examples`` and what its client ``declared``;
    ``of``: see ``evaluation_sample``."""
    chosen = evaluation_sample(list(clients), config.fraction, seed, round_number, of)
    result = FederatedEvaluation(config.metric)
    if not chosen:
        return result
    global_record = vector_record(np.asarray(params, dtype=np.float32))
    settings = ConfigRecord(config.to_config())
    node_to_client = {clients[c]: c for c in chosen}
    messages = [
        Message(RecordDict({protocol.GLOBAL: global_record, protocol.CONFIG: settings}),
                clients[c], EVALUATE, group_id=f"evaluate-{round_number}")
        for c in chosen
    ]
    seen: dict[int, ClientEvaluation] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        client_id = node_to_client.get(reply.metadata.src_node_id)
        if client_id is None:
            continue
        if client_id in seen or client_id in result.rejected:
            continue  # a second reply: the first counts
        try:
            parsed = _parse_reply(reply, max_examples, (declared or {}).get(client_id))
            seen[client_id] = ClientEvaluation(client_id, *parsed)
        except ValueError as exc:
            result.rejected[client_id] = str(exc)
    for c in chosen:
        if c not in seen and c not in result.rejected:
            result.rejected[c] = "no reply before the timeout"
    result.clients = [seen[c] for c in sorted(seen)]
    return result
