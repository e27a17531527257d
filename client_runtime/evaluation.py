"""The client side of federated evaluation: the global model on this client's local test split.

An ``evaluate`` message carries the global vector and a config of the model spec, the loss
and ``local_test``; the client holds out that share of its examples (``fedcore.split.
local_split``: the same split every round, and the one training leaves out) and replies
``num_examples``, ``loss`` and ``metric`` (the loss's metric) as plain metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fedcore import protocol
from fedcore.evaluate import evaluate
from fedcore.nn import Module, set_state
from fedcore.objectives import objective
from fedcore.records import kit_of
from fedcore.split import local_split
from fedcore.wire import read_vector

__all__ = ["evaluate_content", "train_part"]


def train_part(x: np.ndarray, y: np.ndarray, local_test: float, client_id: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The examples a client trains on: all, or all but its local test split."""
    if not local_test:
        return x, y
    train, _ = local_split(y, local_test, client_id)
    return x[train], y[train]


def evaluate_content(
    content: Any,
    client_id: int,
    data: tuple[np.ndarray, np.ndarray],
    model_for: Callable[[protocol.ModelSpec, int], Module],
    allow_import: bool,
) -> Any:
    """Answer an ``evaluate`` message's content (a RecordDict, Flower's or lean) on ``data``
    (this client's examples) with the reply's content; ``model_for(spec, size)`` gives the
    model (built within the device's budget, matching the vector's size)."""
    kit = kit_of(content)
    config = protocol.record(content, protocol.CONFIG, kit.ConfigRecord)
    global_record = protocol.record(content, protocol.GLOBAL, kit.ArrayRecord)
    if config is None or global_record is None:
        raise ValueError(f"evaluate message needs {protocol.CONFIG!r} and {protocol.GLOBAL!r}")
    local_test = float(config["local_test"])
    if not 0.0 < local_test < 1.0:
        raise ValueError(f"local_test must be in (0, 1), got {local_test}")
    spec_data = json.loads(str(config["model"]))
    global_vector = read_vector(global_record)
    if global_vector.dtype != np.float32 or global_vector.ndim != 1:
        raise ValueError(f"global vector is {global_vector.dtype}{list(global_vector.shape)}")
    spec = protocol.ModelSpec(spec_data["name"], spec_data["kwargs"])
    model = model_for(spec, global_vector.size)
    set_state(model, global_vector)
    x, y = data
    _, test = local_split(y, local_test, client_id)
    loss_fn = objective(str(config["loss"]), y, allow_import=allow_import)
    loss, metric = evaluate(model, x[test], y[test], loss=loss_fn)
    if not (math.isfinite(loss) and math.isfinite(metric)):
        raise ValueError("the global model's loss on the local test split is not finite")
    metrics = kit.MetricRecord({"num_examples": len(test), "loss": loss, "metric": metric})
    return kit.RecordDict({protocol.METRICS: metrics})
