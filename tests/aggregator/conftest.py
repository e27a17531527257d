"""Helpers for aggregator tests: hand-built Flower reply messages."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client_runtime.app import partition_id
from fedcore import protocol
from fedcore.wire import VECTOR_KEY


@pytest.fixture(autouse=True, scope="session")
def _task_identity():
    """Messages can only be built once a task identity is set (as Flower's runtimes do)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield


# numpy and array-api-strict: the array backends every aggregation test runs on
BACKENDS = ["cpu", "strict"]


def querying_app() -> ClientApp:
    """A toy ClientApp that answers the server's query as client k with k + 1 examples (as
    the toy clients of the round tests train); the caller registers ``train``."""
    app = ClientApp()

    @app.query()
    def query(msg, context):
        k = partition_id(context)
        info = ConfigRecord({"partition_id": k, "num_examples": k + 1})
        return Message(RecordDict({protocol.CLIENT_INFO: info}), reply_to=msg)

    return app


def reply(vector, num_examples=1, train_loss=1.0, *, node=1, extra=None):
    """A train reply as a client sends it: the local vector and its metrics."""
    content = RecordDict(
        {
            protocol.UPDATE: ArrayRecord({VECTOR_KEY: Array(np.ascontiguousarray(vector))}),
            protocol.METRICS: MetricRecord(
                {"num_examples": num_examples, "train_loss": train_loss, "seconds": 0.0}
            ),
            **(extra or {}),
        }
    )
    return Message(content, node, "train")


def client_vectors(n, size, seed=0, spread=0.1, center=None):
    """``n`` float32 vectors scattered around ``center``."""
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(size).astype(np.float32) if center is None else center
    return center, [
        (center + spread * rng.standard_normal(size)).astype(np.float32) for _ in range(n)
    ]
