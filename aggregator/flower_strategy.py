"""Any fedcore strategy as a Flower ``Strategy``, to drop into a plain Flower ServerApp.

``FlowerStrategy("fedtrimmedavg", {"beta": 0.1})`` keeps the contract of Flower's strategy of
the same name: it samples, configures and evaluates as Flower's ``FedAvg`` (it subclasses it),
sends the strategy's client-side settings in the train config under Flower's names
(``proximal-mu``), starts from Flower's defaults (the norm guard off; see
``aggregator.strategies.flower_options``), keeps each array's shape and dtype, and answers a
round it cannot aggregate with a logged warning and ``(None, None)``.

Aggregation runs on fedcore's own path: each reply goes through ``decode.read_reply`` (with
Flower's reply format: any positive weight under ``weighted_by_key``), its arrays are laid out
into one vector in the model's dtype (``ArrayLayout``), and the round's updates are judged
together (``RoundAggregation.offer_all``) in node order, so the result does not depend on the
order the replies arrived in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from aggregator.decode import ReplyFormat, read_reply
from aggregator.strategies import (
    AggregationError,
    Strategy,
    StrategyContext,
    build_strategy,
    flower_options,
)
from aggregator.updates import ClientUpdate, Rejected
from fedcore.wire import array_view

_KINDS = "fiu"  # floating and integer arrays are averaged; bool, complex, object are refused


@dataclass(frozen=True)
class ArrayLayout:
    """How a model's named arrays map onto one flat vector, and back.

    The vector's dtype is the model's widest float type (float32 for float16/float32 models,
    float64 when any array is float64 or a wide integer); each array comes back in its own
    shape (0-d included) and dtype, integers rounded.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, record: ArrayRecord) -> ArrayLayout:
        """The layout of ``record``; ``ValueError`` for a dtype that cannot be averaged."""
        keys, shapes, dtypes = [], [], []
        for key, array in record.items():
            view = array_view(array)
            if view.dtype.kind not in _KINDS:
                raise ValueError(f"array {key!r} has dtype {view.dtype}: not averageable")
            keys.append(key)
            shapes.append(view.shape)
            dtypes.append(view.dtype)
        dtype = np.result_type(np.float32, *dtypes)
        return cls(tuple(keys), tuple(shapes), tuple(dtypes), dtype)

    @property
    def size(self) -> int:
        """Elements in the flat vector."""
        return sum(math.prod(shape) for shape in self.shapes)

    def flatten(self, record: ArrayRecord) -> np.ndarray:
        """The arrays of ``record`` as one new vector; ``Rejected`` unless it holds exactly
        this layout's keys and shapes, each array numeric."""
        if set(record) != set(self.keys):
            raise Rejected(f"arrays {sorted(record)} do not match the model's {sorted(self.keys)}")
        out = np.empty(self.size, self.dtype)
        offset = 0
        for key, shape in zip(self.keys, self.shapes, strict=True):
            try:
                view = array_view(record[key])
            except ValueError as exc:
                raise Rejected(f"array {key!r}: {exc}") from None
            if view.shape != shape:
                raise Rejected(f"array {key!r} has shape {view.shape}, the model's is {shape}")
            if view.dtype.kind not in _KINDS:
                raise Rejected(f"array {key!r} has dtype {view.dtype}: not averageable")
            size = math.prod(shape)
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite: rejected later
                out[offset : offset + size] = view.reshape(-1)
            offset += size
        return out

    def unflatten(self, vector: np.ndarray) -> ArrayRecord:
        """Inverse of ``flatten``: each array in its own shape and dtype."""
        arrays, offset = {}, 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            part = vector[offset : offset + size].reshape(shape)
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                part = np.clip(np.rint(part), info.min, info.max)
            arrays[key] = Array(np.array(part, dtype=dtype, order="C"))  # 0-d stays 0-d
            offset += size
        return ArrayRecord(arrays)


class FlowerStrategy(FedAvg):
    """A Flower ``Strategy`` whose training aggregation is a fedcore ``Strategy``.

    ``strategy`` is a name from ``aggregator.strategies.known_strategies()``, built with
    Flower's defaults overlaid by ``options`` (and ``context``, which differential privacy
    needs), or a ``Strategy`` you composed yourself, used as it is. The other keyword
    arguments are Flower ``FedAvg``'s (``fraction_train``, ``weighted_by_key``, ...);
    ``train_loss_key`` names the loss q-FedAvg weighs by, as in Flower's ``QFedAvg``.
    """

    def __init__(
        self,
        strategy: str | Strategy,
        options: Mapping[str, Any] | None = None,
        *,
        context: StrategyContext | None = None,
        train_loss_key: str = "train_loss",
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if isinstance(strategy, str):
            merged = {**flower_options(strategy), **(options or {})}
            strategy = build_strategy(strategy, merged, context)
        elif options or context is not None:
            raise ValueError("options and context apply to a strategy given by name")
        self.strategy = strategy
        self.reply_format = ReplyFormat(
            update=None,
            metrics=None,
            weight=self.weighted_by_key,
            examples=False,
            loss=train_loss_key,
            loss_required=False,
            seconds=None,
        )
        self._layout: ArrayLayout | None = None
        self._global: np.ndarray | None = None

    def summary(self) -> None:
        """Log Flower's summary plus the fedcore strategy and its client settings."""
        super().summary()
        log(INFO, "\t└──> fedcore strategy: %s %s", self.strategy.name, self.client_config())

    def client_config(self) -> dict[str, Any]:
        """The strategy's client-side settings under Flower's names (``proximal_mu`` ->
        ``proximal-mu``)."""
        return {k.replace("_", "-"): v for k, v in self.strategy.client_options.items()}

    def remember(self, arrays: ArrayRecord) -> None:
        """Set the global model the next replies are relative to (``configure_train`` does);
        ``ValueError`` if its arrays cannot be averaged."""
        layout = ArrayLayout.of(arrays)
        try:
            vector = layout.flatten(arrays)
        except Rejected as exc:
            raise ValueError(f"the global model: {exc}") from None
        self._layout, self._global = layout, vector

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model, add the client settings, sample and configure as
        FedAvg."""
        self.remember(arrays)
        for key, value in self.client_config().items():
            config[key] = value
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the round's replies with the fedcore strategy: ``(None, None)`` and a
        warning when it cannot (no usable reply, too few for the rule, any other failure)."""
        try:
            return self._aggregate(server_round, list(replies))
        except Exception as exc:  # Flower's convention: a failed round is skipped, not fatal
            log(
                WARNING,
                "aggregate_train: round %s not aggregated: %s: %s",
                server_round,
                type(exc).__name__,
                exc,
            )
            return None, None

    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._layout is None or self._global is None:
            raise AggregationError("configure_train (or remember) must run before aggregation")
        errors = sum(reply.has_error() for reply in replies)
        log(
            INFO,
            "aggregate_train: Received %s results and %s failures",
            len(replies) - errors,
            errors,
        )
        used, updates = [], []
        for reply in _in_node_order(replies):
            try:
                updates.append(self.decode(reply))
            except Rejected as exc:
                _rejected(reply, exc)
                continue
            used.append(reply)
        if not updates:
            raise AggregationError("no usable reply")
        aggregation = self.strategy.start_round(self._global, server_round)
        accepted = []
        for reply, reason in zip(used, aggregation.offer_all(updates), strict=True):
            if reason is None:
                accepted.append(reply)
            else:
                _rejected(reply, reason)
        if not accepted:
            raise AggregationError("every reply was rejected")
        new = aggregation.finish()  # AggregationError unless finite
        chosen = aggregation.rule.chosen
        counted = accepted if chosen is None else [accepted[i] for i in chosen]
        return self._layout.unflatten(new), self._metrics(counted)

    def decode(self, reply: Message) -> ClientUpdate:
        """One reply as an update of the global model: ``read_reply`` with Flower's format,
        then its arrays in the model's layout; ``Rejected`` for anything wrong with it."""
        assert self._layout is not None, "remember() the global model first"
        try:
            record, update = read_reply(reply, self.reply_format)
            update.values = self._layout.flatten(record)
        except Rejected:
            raise
        except Exception as exc:  # a reply must never end a round: whatever broke, reject it
            raise Rejected(f"malformed reply: {type(exc).__name__}: {exc}"[:300]) from None
        update.bytes_up = sum(len(array.data) for array in record.values())
        return update

    def _metrics(self, replies: list[Message]) -> MetricRecord | None:
        """The train metrics of the replies the result is made of, as Flower aggregates
        them (None and a warning if the metric function fails on them)."""
        try:
            return self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        except Exception as exc:  # a user's function or odd metric values: keep the model
            log(WARNING, "aggregate_train: train metrics not aggregated: %s", exc)
            return None


def _in_node_order(replies: list[Message]) -> list[Message]:
    """Replies sorted by sending node; a node that answered twice is dropped altogether
    (which of its replies counts would depend on arrival order)."""
    by_node: dict[int, list[Message]] = {}
    for reply in replies:
        by_node.setdefault(reply.metadata.src_node_id, []).append(reply)
    ordered = []
    for node in sorted(by_node):
        if len(by_node[node]) > 1:
            _rejected(by_node[node][0], f"{len(by_node[node])} replies from one node")
            continue
        ordered.append(by_node[node][0])
    return ordered


def _rejected(reply: Message, reason: object) -> None:
    log(
        WARNING,
        "aggregate_train: reply from node %s rejected: %s",
        reply.metadata.src_node_id,
        reason,
    )
