"""Flower messages as a ClientApp sends them, and the grid Flower's ``configure_train`` asks:
shared by the ``FlowerStrategy`` tests (contract and parity with Flower)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

KEY = "num-examples"


class FakeGrid:
    """What Flower's ``configure_train`` asks of a grid: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def reply(arrays: dict[str, np.ndarray], weight, loss: float, node: int, extra=None) -> Message:
    """A train reply from ``node`` as a Flower ClientApp sends it."""
    ins = Message(RecordDict(), node, "train")
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
            "metrics": MetricRecord({KEY: weight, "train_loss": loss, **(extra or {})}),
        }
    )
    return Message(content, reply_to=ins)


def error_reply(node: int) -> Message:
    return Message(
        Error(code=1, reason="out of memory"), reply_to=Message(RecordDict(), node, "train")
    )


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}
