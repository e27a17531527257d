"""Issue 13, findings 1, 2 and 4: one hostile train or query reply rejects that client only."""

import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from aggregator.decode import check_examples, decode_client_info, decode_reply
from aggregator.rounds import discover
from aggregator.strategies import AggregationError, QFedAvg, Strategy, WeightedMean
from aggregator.strategies.aggregation import RoundAggregation
from aggregator.updates import Rejected
from client_runtime.app import partition_id
from fedcore import compression, protocol
from fedcore.wire import VECTOR_KEY
from simulations.runtimes.inprocess import InProcessGrid

from .conftest import reply
from .test_rounds import SIZE, run, toy_app


def test_absurd_or_non_integer_example_counts_are_rejected():  # finding 1
    vector = np.zeros(SIZE, np.float32)
    for count, match in [
        (1e300, "must be an integer"),
        (float("inf"), "must be an integer"),
        (3.0, "must be an integer"),
        ([3], "must be an integer"),
        (0, "reported 0 examples"),
        (-5, "reported -5 examples"),
        (10**12, "more than the cap"),
    ]:
        with pytest.raises(Rejected, match=match):
            decode_reply(reply(vector, num_examples=count), SIZE)
    with pytest.raises(Rejected, match="more than the 50 it declared"):
        decode_reply(reply(vector, num_examples=51), SIZE, declared=50)
    assert decode_reply(reply(vector, num_examples=50), SIZE, declared=50).num_examples == 50
    with pytest.raises(Rejected, match="cap of 10"):
        check_examples(11, None, cap=10)


def test_a_client_cannot_claim_more_examples_than_it_declared_in_a_round():  # finding 1
    # client 2 declares 3 examples at discovery (k + 1), then claims 10**5 to dominate the mean
    app = toy_app()

    def claims_more(msg, context):
        answer = app(msg, context)
        if msg.metadata.message_type == "train" and partition_id(context) == 2:
            answer.content[protocol.METRICS]["num_examples"] = 10**5
        return answer

    final, outcomes = run(claims_more, rounds=1, per_round=6)
    reasons = {c.client_id: c.reason for c in outcomes[0].clients if not c.accepted}
    assert list(reasons) == [2] and "more than the 3 it declared" in reasons[2]
    expected = sum(k * (k + 1) for k in (0, 1, 3, 4, 5)) / sum(k + 1 for k in (0, 1, 3, 4, 5))
    np.testing.assert_allclose(final, expected, rtol=1e-6)


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), [0.5]])
def test_non_finite_losses_are_rejected_before_q_fedavg_weighs_them(loss):  # finding 1
    with pytest.raises(Rejected, match="train_loss"):
        decode_reply(reply(np.zeros(SIZE, np.float32), train_loss=loss), SIZE)


def test_q_fedavg_refuses_a_negative_loss():  # finding 1
    update = decode_reply(reply(np.ones(SIZE, np.float32), train_loss=-1.0), SIZE)
    update.norm = 1.0
    rule = QFedAvg(SIZE, WeightedMean(SIZE, _numpy()).backend)
    with pytest.raises(Rejected, match="finite loss >= 0"):
        rule.add(update, 1)


def _numpy():
    from aggregator.backend import select_backend

    return select_backend("cpu")


class _Explodes:
    """A server optimizer whose step overflows (as an unstable adaptive step can)."""

    def step(self, global_vector, aggregate, round_number):
        return aggregate * np.float32(np.inf)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_non_finite_new_model_is_never_returned():  # finding 1
    strategy = Strategy("fedavg", WeightedMean, server_opt=_Explodes(), backend=_numpy())
    aggregation = RoundAggregation(strategy, np.zeros(SIZE, np.float32), 1)
    aggregation.offer(decode_reply(reply(np.ones(SIZE, np.float32)), SIZE))
    with pytest.raises(AggregationError, match="non-finite"):
        aggregation.finish()


def _compressed(codec_record, arrays):
    content = RecordDict(
        {
            protocol.UPDATE: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            protocol.METRICS: MetricRecord({"num_examples": 1, "train_loss": 0.5}),
            protocol.CODEC: ConfigRecord(codec_record),
        }
    )
    return Message(content, 1, "train")


def test_the_server_decodes_only_the_codec_and_options_it_asked_for():  # finding 2
    size = 4096
    payload = compression.encode("int8", np.ones(size, np.float32), np.random.default_rng(0))
    honest = _compressed({"name": "int8"}, payload)
    opts = {"block": 1024}
    assert decode_reply(honest, size, codec="int8", codec_options=opts).delta.shape == (size,)
    # a 402-byte reply naming a 2**27 block would make the server write 512 MB
    tiny = {"q": np.zeros(size, np.uint8), "lo": np.zeros(1, np.float32)}
    tiny["step"] = np.zeros(1, np.float32)
    hostile = _compressed({"name": "int8", "block": 2**27}, tiny)
    tracemalloc.start()
    for asked in ("int8", "none"):
        with pytest.raises(Rejected, match="not the one asked for"):
            decode_reply(hostile, size, codec=asked, codec_options=opts if asked != "none" else {})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    plain_named_topk = _compressed({"name": "topk", "ratio": 1.0}, {"idx": np.arange(3)})
    with pytest.raises(Rejected, match="not the one asked for"):
        decode_reply(plain_named_topk, size)


def test_compressed_payload_limits_hold():  # finding 2
    size = 1000
    idx = np.arange(500, dtype=np.uint32)
    too_many = _compressed(
        {"name": "topk", "ratio": 0.01}, {"idx": idx, "val": np.ones(500, np.float32)}
    )
    with pytest.raises(Rejected, match="at most 10"):
        decode_reply(too_many, size, codec="topk", codec_options={"ratio": 0.01})
    payload = compression.encode("int8", np.ones(size, np.float32), np.random.default_rng(0))
    payload["lo"] = np.full_like(payload["lo"], np.nan)
    with pytest.raises(Rejected, match="non-finite 'lo'"):
        decode_reply(_compressed({"name": "int8"}, payload), size, codec="int8")


def _raw(data, dtype="float32", shape=(SIZE,)):
    array = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    content = RecordDict(
        {
            protocol.UPDATE: ArrayRecord({VECTOR_KEY: array}),
            protocol.METRICS: MetricRecord({"num_examples": 1, "train_loss": 0.5}),
        }
    )
    return Message(content, 1, "train")


def test_malformed_npy_payloads_are_rejected_not_raised():  # finding 4
    good = bytes(Array(np.zeros(SIZE, np.float32)).data)
    for data, dtype, shape in [
        (b"\x93NUMPY", "float32", (SIZE,)),  # the 6-byte payload that raised IndexError
        (b"", "float32", (SIZE,)),
        (good[:-1], "float32", (SIZE,)),
        (good + b"\0" * 4, "float32", (SIZE,)),
        (good, "no-such-dtype", (SIZE,)),
        (good, "object", (SIZE,)),
        (good, "float32", (10**12,)),
        (good.replace(b"'<f4'", b"'|O8'"), "float32", (SIZE,)),
    ]:
        with pytest.raises(Rejected):
            decode_reply(_raw(data, dtype, shape), SIZE)


def test_a_query_reply_without_partition_id_leaves_that_node_out():  # finding 4
    for info in ({"num_examples": 3}, {"partition_id": "x"}, {"partition_id": 1.5}):
        with pytest.raises(Rejected):
            content = RecordDict({protocol.CLIENT_INFO: ConfigRecord(info)})
            decode_client_info(Message(content, 1, "query"))
    app = toy_app()

    def forgets_its_id(msg, context):
        answer = app(msg, context)
        if partition_id(context) == 1:
            del answer.content[protocol.CLIENT_INFO]["partition_id"]
        return answer

    grid = InProcessGrid(forgets_its_id, 3)
    clients, declared = discover(grid, list(grid.get_node_ids()))
    assert sorted(clients) == [0, 2] and declared == {0: 1, 2: 3}
