"""The honest side of the reply fuzzers (``test_fuzz_replies``: plain and compressed rounds,
``test_fuzz_secagg``: SecAgg+): ``N`` in-process clients whose honest answers give a known
mean, one federated round over them and the count of hostile replies tried."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, Message, MetricRecord, RecordDict
from hypothesis import strategies as st

from aggregator.rounds import FederationConfig, run_federation
from aggregator.strategies import build_strategy
from client_runtime.app import partition_id
from client_runtime.compression import compress_update
from client_runtime.secagg_app import TrainOutput, register_secagg
from fedcore import protocol
from fedcore.settings import TrainSettings
from fedcore.wire import vector_record
from simulations.runtimes.inprocess import InProcessGrid
from tests.aggregator.conftest import querying_app

SIZE = 16
N = 8


# hostile replies tried, by fuzzer (test_fuzz_secagg checks the total)
COUNTS = {"plain": 0, "int8": 0, "secagg": 0}


def honest_app(codec="none"):
    """Client k trains global + k (int8: the same delta, which int8 encodes exactly) on k + 1
    examples, and declares k + 1 examples when asked."""
    app = querying_app()

    def local(msg, context):
        k = partition_id(context)
        base = np.asarray(msg.content[protocol.GLOBAL]["vector"].numpy(), np.float32)
        return TrainOutput(base + np.float32(k), k + 1, k / 10, 0.0)

    @app.train()
    def train(msg, context):
        out = local(msg, context)
        metrics = {"num_examples": out.num_examples, "train_loss": out.loss, "seconds": 0.0}
        content = RecordDict({protocol.METRICS: MetricRecord(metrics)})
        if codec == "none":
            content[protocol.UPDATE] = vector_record(out.params)
        else:
            base = np.asarray(msg.content[protocol.GLOBAL]["vector"].numpy(), np.float32)
            content[protocol.UPDATE], content[protocol.CODEC] = compress_update(
                out.params, base, codec, {}, context.state, seed=1
            )
        return Message(content, reply_to=msg)

    register_secagg(app, local)
    return app


def one_round(app, grid=None, codec="none", secagg=None):
    train = protocol.TrainInstructions(
        0, protocol.ModelSpec("toy"), TrainSettings(), 0, compression=codec
    )
    config = FederationConfig(1, N, train, seed=3, secagg=secagg)
    outcomes = []
    final = run_federation(
        grid or InProcessGrid(app, N),
        config,
        np.zeros(SIZE, np.float32),
        build_strategy("fedavg"),
        lambda p: (0.0, 0.0),
        outcomes.append,
    )
    return final, outcomes[0]


def hostile_clients(mutations, low, high):
    return st.dictionaries(st.integers(0, N - 1), mutations, min_size=low, max_size=high)


def replace_array(record, key, **changes):
    """Replace array ``key`` of ``record`` by one with some of its fields (bytes, dtype, shape)
    changed."""
    old = record[key]
    fields = {"dtype": old.dtype, "shape": tuple(old.shape), "stype": old.stype}
    fields["data"] = bytes(old.data)
    fields.update(changes)
    record[key] = Array(**fields)


