"""Any fedcore strategy as a Flower ``Strategy``, to drop into a plain Flower ServerApp.

``FlowerStrategy(build_strategy("fedadam"))`` behaves like Flower's ``FedAvg`` for sampling,
configuration and evaluation (it subclasses it) and aggregates training replies with the
fedcore composition: every reply's arrays are flattened in key order into one vector,
validated, folded into the rule, and the server optimizer's result is cut back into an
``ArrayRecord`` with the original keys and shapes. Rejected replies are logged and skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from aggregator.strategies import Strategy
from aggregator.strategies.rules import AggregationError
from aggregator.updates import ClientUpdate, Rejected


def flatten(record: ArrayRecord) -> tuple[np.ndarray, list[tuple[str, tuple[int, ...]]]]:
    """One float32 vector of all arrays (in key order) and the layout to undo it."""
    layout = [(key, tuple(array.shape)) for key, array in record.items()]
    parts = [record[key].numpy().astype(np.float32, copy=False).ravel() for key, _ in layout]
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), layout


def unflatten(vector: np.ndarray, layout: list[tuple[str, tuple[int, ...]]]) -> ArrayRecord:
    """Inverse of ``flatten``."""
    arrays, offset = {}, 0
    for key, shape in layout:
        size = math.prod(shape)
        arrays[key] = Array(np.ascontiguousarray(vector[offset : offset + size].reshape(shape)))
        offset += size
    return ArrayRecord(arrays)


class FlowerStrategy(FedAvg):
    """A Flower ``Strategy`` whose training aggregation is a fedcore ``Strategy``."""

    def __init__(self, strategy: Strategy, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.strategy = strategy
        self._global: tuple[np.ndarray, list[tuple[str, tuple[int, ...]]]] | None = None

    def remember(self, arrays: ArrayRecord) -> None:
        """Set the global model the next replies are relative to (``configure_train`` does)."""
        self._global = flatten(arrays)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model, then sample and configure as FedAvg."""
        self.remember(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and aggregate the replies with the fedcore composition."""
        if self._global is None:
            raise AggregationError("configure_train (or remember) must run before aggregation")
        global_vector, layout = self._global
        aggregation = self.strategy.start_round(global_vector, server_round)
        used = []
        for reply in replies:
            try:
                if reply.has_error():
                    raise Rejected(f"client error: {reply.error.reason}")
                records = list(reply.content.array_records.values())
                metrics = list(reply.content.metric_records.values())
                if len(records) != 1 or len(metrics) != 1:
                    raise Rejected("expected exactly one ArrayRecord and one MetricRecord")
                vector, their_layout = flatten(records[0])
                if their_layout != layout:
                    raise Rejected(f"arrays {their_layout} do not match the model's {layout}")
                weight = metrics[0].get(self.weighted_by_key)
                if not isinstance(weight, int | float) or weight <= 0:
                    raise Rejected(f"bad {self.weighted_by_key!r}: {weight!r}")
                loss = float(metrics[0].get("train_loss", 0.0))
                update = ClientUpdate(int(weight), loss, 0.0, vector.nbytes, values=vector)
                aggregation.offer(update)
                used.append(reply.content)
            except Rejected as exc:
                log(
                    WARNING,
                    "aggregate_train: reply from node %s rejected: %s",
                    reply.metadata.src_node_id,
                    exc,
                )
        if not used:
            return None, None
        new = aggregation.finish()
        return unflatten(new, layout), self.train_metrics_aggr_fn(used, self.weighted_by_key)
