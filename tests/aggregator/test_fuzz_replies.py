"""Issue 13: property-based fuzzing of what clients send the server, in plain, compressed and
SecAgg+ rounds. Hostile replies (wrong types, shapes, dtypes, sizes, non-finite values,
absurd counts and options, truncated payloads, missing records, duplicates) are mixed with
honest ones; every round completes, every hostile client is rejected with a reason, the
model stays finite and equals the honest clients' FedAvg mean."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.rounds import FederationConfig, run_federation
from aggregator.secagg import SecAggConfig
from aggregator.strategies import build_strategy
from client_runtime.app import partition_id
from client_runtime.compression import compress_update
from client_runtime.secagg_app import TrainOutput, register_secagg
from fedcore import compression, protocol
from fedcore.secagg import messages
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.settings import TrainSettings
from fedcore.wire import VECTOR_KEY, vector_record
from simulations.runtimes.inprocess import InProcessGrid

SIZE = 16
N = 8


def fuzz(examples):
    """Hypothesis settings for a fuzz test: derandomised (the same cases on every CI run)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


COUNTS = {"plain": 0, "int8": 0, "secagg": 0}


def honest_app(codec="none"):
    """Client k trains global + k (int8: the same delta, which int8 encodes exactly) on k + 1
    examples, and declares k + 1 examples when asked."""
    app = ClientApp()

    @app.query()
    def query(msg, context):
        k = partition_id(context)
        info = ConfigRecord({"partition_id": k, "num_examples": k + 1})
        return Message(RecordDict({protocol.CLIENT_INFO: info}), reply_to=msg)

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


def _replace_array(record, key, **changes):
    old = record[key]
    fields = {"dtype": old.dtype, "shape": tuple(old.shape), "stype": old.stype}
    fields["data"] = bytes(old.data)
    fields.update(changes)
    record[key] = Array(**fields)


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
        _replace_array(update, key, data=data[: max(0, len(data) - cut)])
    elif kind == "garbage":
        key, data = param
        _replace_array(update, key, data=data)
    elif kind == "dtype":
        key, dtype = param
        _replace_array(update, key, dtype=dtype)
    elif kind == "shape":
        key, shape = param
        _replace_array(update, key, shape=shape)
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


def hostile_clients(mutations, low, high):
    return st.dictionaries(st.integers(0, N - 1), mutations, min_size=low, max_size=high)


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


# --- SecAgg+ ---------------------------------------------------------------------------------

STAGE_TYPES = {
    "advertise": "query.secagg_advertise",
    "share": "query.secagg_share",
    "masked": "train.secagg_masked",
}
SECAGG = st.tuples(
    st.sampled_from(sorted(STAGE_TYPES)),
    st.one_of(
        st.tuples(st.just("body"), st.binary(max_size=120)),
        st.tuples(st.just("stage"), st.sampled_from(["share", "unmask", "", "advertise "])),
        st.tuples(st.just("no_record"), st.none()),
        st.tuples(st.just("error"), st.text(max_size=20)),
        st.tuples(st.just("field"), st.integers(0, 5)),
        st.tuples(st.just("vector"), st.sampled_from(["truncate", "dtype", "shape", "drop"])),
    ),
)


def _tamper_fields(stage, parsed, which):
    """A structurally wrong but parseable variant of an honest stage reply."""
    import dataclasses

    if stage == "advertise":
        options = [
            {"c_pks": (bytes(32), *parsed.c_pks[1:])},  # a low-order key
            {"s_pks": parsed.c_pks},  # keys not distinct
            {"c_pks": parsed.c_pks[:-1]},  # lists differ in length
            {"c_pks": (b"short", *parsed.c_pks[1:])},
            {"slots": tuple(reversed(parsed.slots))},
            {"slots": (), "c_pks": (), "s_pks": ()},
        ]
    elif stage == "share":
        options = [
            {"recipients": parsed.recipients[1:], "ciphertexts": parsed.ciphertexts[1:]},
            {"ciphertexts": parsed.ciphertexts[1:]},
            {"commitment": b"x" * 31},
            {"recipients": (*parsed.recipients[:-1], 99)},
            {"session": b"0" * 16},
            {"recipients": (), "ciphertexts": ()},
        ]
    else:
        size = parsed.masked.size
        options = [
            {"masked": parsed.masked[:-1]},
            {"masked": parsed.masked.astype(np.int64)},
            {"masked": np.zeros(size + 5, np.uint32)},
            {"session": b"1" * 16},
            {"masked": parsed.masked.astype(np.float32)},
            {"masked": np.zeros(0, np.uint32)},
        ]
    return dataclasses.replace(parsed, **options[which % len(options)])


def mutate_secagg(answer, msg, stage, kind, param):
    if kind == "error":
        return Message(Error(code=0, reason=param), reply_to=msg)
    content = answer.content
    record = content[messages.RECORD]
    if kind == "body":
        record["body"] = param
    elif kind == "stage":
        record["stage"] = param if param != stage else param + "!"
    elif kind == "no_record":
        del content[messages.RECORD]
    elif kind == "field":
        kinds = {"advertise": messages.KeysReply, "share": messages.ShareReply}
        parsed = messages.from_content(kinds.get(stage, messages.MaskReply), content)
        changed = _tamper_fields(stage, parsed, param)
        new = messages.to_content(changed)
        for name in list(content):
            del content[name]
        for name, value in new.items():
            content[name] = value
    elif kind == "vector":
        if stage != "masked" or param == "drop":
            content.pop(messages.MASKED, None)
            if stage != "masked":
                record["body"] = record["body"][:-1]
        else:
            old = content[messages.MASKED][VECTOR_KEY]
            changes = {
                "truncate": {"data": bytes(old.data)[:-3]},
                "dtype": {"dtype": "complex64"},
                "shape": {"shape": (old.shape[0] + 1,)},
            }[param]
            _replace_array(content[messages.MASKED], VECTOR_KEY, **changes)
    return answer


class HostileSecAggApp:
    def __init__(self, hostile):
        self.app, self.hostile = honest_app(), hostile

    def __call__(self, msg, context):
        answer = self.app(msg, context)
        k = partition_id(context)
        if k not in self.hostile or answer.has_error():
            return answer
        stage, (kind, param) = self.hostile[k]
        if msg.metadata.message_type != STAGE_TYPES[stage]:
            return answer
        return mutate_secagg(answer, msg, stage, kind, param)


def secagg_mean(honest, n=N, max_weight=8.0):
    enc = FixedPoint.for_round(n, SecAggConfig.clip, max_weight)
    w = np.array([enc.weight_units(k + 1) for k in honest], np.float64)
    value = sum(k * wk for k, wk in zip(honest, w, strict=True)) / w.sum()
    return value, enc.error_bound(n, w.sum())


@fuzz(80)
@given(hostile=hostile_clients(SECAGG, 1, 2))
def test_secagg_rounds_drop_every_hostile_participant(hostile):
    final, outcome = one_round(HostileSecAggApp(hostile), secagg=SecAggConfig(t=5, max_weight=8))
    honest = [k for k in range(N) if k not in hostile]
    value, bound = secagg_mean(honest)
    assert np.isfinite(final).all()
    np.testing.assert_allclose(final, value, atol=bound + 1e-6)
    for c in outcome.clients:
        assert c.accepted == (c.client_id not in hostile), (c, hostile.get(c.client_id))
        assert c.accepted or c.reason
    COUNTS["secagg"] += len(hostile)


def test_at_least_a_thousand_hostile_replies_were_tried():
    if not all(COUNTS.values()):
        pytest.skip("run with the fuzz tests above (same module, default order)")
    print("hostile replies tried:", COUNTS)
    assert sum(COUNTS.values()) >= 1000, COUNTS


def test_compression_codecs_round_trip_the_honest_update():
    payload = compression.encode("int8", np.full(SIZE, 3.0, np.float32), np.random.default_rng(0))
    decoded = compression.decode("int8", payload, SIZE, block=1024)
    np.testing.assert_array_equal(decoded, np.full(SIZE, 3.0, np.float32))
    assert ArrayRecord  # the records the fuzzers build
