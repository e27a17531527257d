"""Issue 13: property-based fuzzing of what clients send the server, in plain and compressed
rounds (SecAgg+: ``test_fuzz_secagg``; the honest clients: ``fuzz_clients``). Hostile replies
(wrong types, shapes, dtypes, sizes, non-finite values, absurd counts and options, truncated
payloads, missing records, duplicates) are mixed with honest ones; every round completes,
every hostile client is rejected with a reason, the model stays finite and equals the honest
clients' FedAvg mean."""

import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message
from hypothesis import given
from hypothesis import strategies as st

from client_runtime.app import partition_id
from fedcore import compression, protocol
from fedcore.wire import VECTOR_KEY, vector_record
from simulations.runtimes.inprocess import InProcessGrid
from tests.aggregator.fuzz_clients import (
    COUNTS,
    SIZE,
    N,
    honest_app,
    hostile_clients,
    one_round,
    replace_array,
)
from tests.fuzzing import fuzz

# --- hostile train replies ----------------------------------------------------------------

BAD_DTYPES = ["float64", "float16", "int32", "int8", "object", "<U4", "V4", "bogus", ">f4"]
BAD_SHAPES = [(SIZE + 1,), (SIZE - 1,), (10**12,), (4, 4), (), (0,)]
NONFINITE = [math.nan, math.inf, -math.inf]


def _int64s(low, high):
    return st.integers(max(low, -(2**63)), min(high, 2**63 - 1))


def metric_mutations():
    counts = st.one_of(
        _int64s(-(2**63), 0),
        _int64s(2 * N, 2**63 - 1),
        st.integers(1, 5).map(lambda d: ("over", d)),  # more than it declared
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.integers(1, 3), min_size=1, max_size=3),
    )
    return st.one_of(
        st.tuples(st.just("examples"), counts),
        st.tuples(st.just("loss"), st.sampled_from([*NONFINITE, [0.5]])),
        st.tuples(st.just("seconds"), st.sampled_from([*NONFINITE, -1.0])),
        st.tuples(st.just("drop"), st.sampled_from([protocol.METRICS, protocol.UPDATE])),
        st.tuples(st.just("as_config"), st.sampled_from([protocol.METRICS, protocol.UPDATE])),
        st.tuples(st.just("error"), st.text(max_size=30)),
    )


def payload_mutations(key):
    return st.one_of(
        st.tuples(st.just("truncate"), st.tuples(st.just(key), st.integers(1, 200))),
        st.tuples(st.just("garbage"), st.tuples(st.just(key), st.binary(max_size=300))),
        st.tuples(st.just("dtype"), st.tuples(st.just(key), st.sampled_from(BAD_DTYPES))),
        st.tuples(st.just("shape"), st.tuples(st.just(key), st.sampled_from(BAD_SHAPES))),
        st.tuples(st.just("extra"), st.integers(1, 64)),
    )


PLAIN = st.one_of(
    metric_mutations(),
    payload_mutations(VECTOR_KEY),
    st.tuples(
        st.just("nonfinite"), st.tuples(st.integers(0, SIZE - 1), st.sampled_from(NONFINITE))
    ),
    st.tuples(st.just("huge"), st.floats(1e5, 1e38)),
    st.tuples(
        st.just("codec"),
        st.sampled_from(
            [
                {"name": "int8"},
                {"name": "int8", "block": 2**27},
                {"name": "topk", "ratio": 1.0},
                {"name": "zip"},
                {"name": 5},
                {},
            ]
        ),
    ),
)
INT8 = st.one_of(
    metric_mutations(),
    payload_mutations("q"),
    payload_mutations("lo"),
    st.tuples(st.just("lo_value"), st.sampled_from([*NONFINITE, 1e38, -1e38])),
    st.tuples(st.just("step_value"), st.sampled_from([*NONFINITE, 1e30, -1.0e30])),
    st.tuples(
        st.just("codec"),
        st.one_of(
            st.sampled_from([{"name": "none"}, {"name": "int4"}, {"name": "topk"}, {}]),
            st.integers(2, 2**45).filter(lambda b: b != 1024).map(
                lambda b: {"name": "int8", "block": b}
            ),
        ),
    ),
    st.tuples(st.just("drop_codec"), st.none()),
)


def mutate_train(answer, msg, kind, param, declared):
    """Apply one hostile change to an honest train reply (or replace it)."""
    content = answer.content
    if kind == "error":
        return Message(Error(code=0, reason=param), reply_to=msg)
    metrics, update = content[protocol.METRICS], content[protocol.UPDATE]
    if kind == "examples":
        metrics["num_examples"] = declared + param[1] if isinstance(param, tuple) else param
    elif kind == "loss":
        metrics["train_loss"] = param
    elif kind == "seconds":
        metrics["seconds"] = param
    elif kind == "drop":
        del content[param]
    elif kind == "as_config":
        content[param] = ConfigRecord({"num_examples": 1})
    elif kind == "truncate":
        key, cut = param
        data = bytes(update[key].data)
        replace_array(update, key, data=data[: max(0, len(data) - cut)])
    elif kind == "garbage":
        key, data = param
        replace_array(update, key, data=data)
    elif kind == "dtype":
        key, dtype = param
        replace_array(update, key, dtype=dtype)
    elif kind == "shape":
        key, shape = param
        replace_array(update, key, shape=shape)
    elif kind == "extra":
        update["extra"] = Array(np.zeros(param, np.float32))
    elif kind == "nonfinite":
        index, value = param
        vector = update[VECTOR_KEY].numpy().copy()
        vector[index] = value
        content[protocol.UPDATE] = vector_record(vector)
    elif kind == "huge":
        content[protocol.UPDATE] = vector_record(np.full(SIZE, param, np.float32))
    elif kind in ("lo_value", "step_value"):
        key = kind.split("_")[0]
        array = update[key].numpy().copy()
        array[0] = param
        update[key] = Array(array)
        if key == "step":  # codes at the top so the step counts
            update["q"] = Array(np.full(update["q"].shape, 255, np.uint8))
    elif kind == "codec":
        content[protocol.CODEC] = ConfigRecord(param)
    elif kind == "drop_codec":
        del content[protocol.CODEC]
    return answer


class HostileApp:
    """The honest app, with client ``k``'s train replies changed by ``hostile[k]``."""

    def __init__(self, codec, hostile):
        self.app, self.hostile = honest_app(codec), hostile

    def __call__(self, msg, context):
        answer = self.app(msg, context)
        k = partition_id(context)
        if msg.metadata.message_type != "train" or k not in self.hostile:
            return answer
        kind, param = self.hostile[k]
        return mutate_train(answer, msg, kind, param, declared=k + 1)


class TwiceGrid(InProcessGrid):
    """Replies of the clients in ``twice`` arrive twice (the first one counts)."""

    def __init__(self, app, num_nodes, twice):
        super().__init__(app, num_nodes)
        self.twice = {self.node_id(k) for k in twice}

    def send_and_receive(self, messages, *, timeout=None):
        out = list(super().send_and_receive(messages, timeout=timeout))
        return out + [m for m in out if m.metadata.src_node_id in self.twice]


def fedavg(honest):
    return sum(k * (k + 1) for k in honest) / sum(k + 1 for k in honest)


def check_round(final, outcome, hostile, duplicated=()):
    honest = [k for k in range(N) if k not in hostile]
    assert np.isfinite(final).all()
    np.testing.assert_allclose(final, np.full(SIZE, fedavg(honest), np.float32), rtol=1e-5)
    firsts = {}
    for c in outcome.clients:
        firsts.setdefault(c.client_id, c)
    for k in range(N):
        c = firsts[k]
        if k in hostile:
            assert not c.accepted and c.reason, (k, hostile[k], c)
        else:
            assert c.accepted, (k, c.reason)
    extra = [c for c in outcome.clients if c is not firsts[c.client_id]]
    assert sorted(c.client_id for c in extra) == sorted(duplicated)
    assert all(not c.accepted and "duplicate" in c.reason for c in extra)


@fuzz(300)
@given(hostile=hostile_clients(PLAIN, 2, 3), twice=st.sets(st.integers(0, N - 1), max_size=2))
def test_plain_rounds_reject_every_hostile_reply(hostile, twice):
    twice = twice - set(hostile)
    grid = TwiceGrid(HostileApp("none", hostile), N, twice)
    final, outcome = one_round(None, grid=grid)
    check_round(final, outcome, hostile, twice)
    COUNTS["plain"] += len(hostile) + len(twice)


@fuzz(160)
@given(hostile=hostile_clients(INT8, 2, 3))
def test_compressed_rounds_reject_every_hostile_reply(hostile):
    final, outcome = one_round(HostileApp("int8", hostile), codec="int8")
    check_round(final, outcome, hostile)
    COUNTS["int8"] += len(hostile)


def test_compression_codecs_round_trip_the_honest_update():
    payload = compression.encode("int8", np.full(SIZE, 3.0, np.float32), np.random.default_rng(0))
    decoded = compression.decode("int8", payload, SIZE, block=1024)
    np.testing.assert_array_equal(decoded, np.full(SIZE, 3.0, np.float32))
    assert ArrayRecord  # the records the fuzzers build
