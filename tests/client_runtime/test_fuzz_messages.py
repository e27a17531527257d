"""Issue 13: property-based fuzzing of what a device receives from a server: malformed train
instructions, hostile model specs, broken global vectors, garbage SecAgg+ requests and run
configs. The device answers with an error (or its data loader refuses) and never crashes,
opens a file, or allocates beyond its budget."""

import builtins
import io
import json
import math
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from client_runtime.app import make_client_app
from fedcore import protocol
from fedcore.secagg import messages
from fedcore.settings import TrainSettings
from fedcore.wire import VECTOR_KEY, vector_record
from simulations.runtimes.inprocess import InProcessGrid
from tests.fuzzing import fuzz

BUDGET = 64 << 20  # the device's memory budget, bytes
X = np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32)
Y = np.arange(24) % 2
SPEC = protocol.ModelSpec("logreg", {"input_dim": 8, "num_classes": 2})
GLOBAL = np.zeros(18, np.float32)
COUNT = {"messages": 0}


def device():
    app = make_client_app(lambda pid: (X, Y))  # a deployed device: no imports by name
    config = {protocol.PARTITION_ID: 0, protocol.MEMORY_BUDGET: BUDGET}
    return InProcessGrid(app, 1, node_config=lambda i: config)


GRID = device()
NODE = GRID.node_id(0)


def honest_config():
    instructions = protocol.TrainInstructions(1, SPEC, TrainSettings(batch_size=8), 7)
    return instructions.to_config()


def train_message(config=None, vector_record_=None, drop=()):
    content = RecordDict(
        {
            protocol.GLOBAL: vector_record_ or vector_record(GLOBAL),
            protocol.CONFIG: ConfigRecord(config if config is not None else honest_config()),
        }
    )
    for key in drop:
        del content[key]
    return Message(content, NODE, "train", group_id="1")


def _installed_metadata(path) -> bool:
    """What looking up installed entry points reads (the model registry does): the import
    path's own entries and distributions' metadata; never a path a message chose."""
    text = str(path)
    if text in sys.path or text.startswith("__editable__"):
        return True
    return any(part.endswith((".dist-info", ".egg-info")) for part in Path(text).parts)


class NoFiles:
    """Fail the test if anything opens a file while a hostile message is handled (installed
    packages' metadata aside: the path is never the message's)."""

    def __enter__(self):
        self.opened = []
        self.saved = builtins.open, io.open, os.open
        saved_open, saved_os_open = builtins.open, os.open

        def guarded(real):
            def opener(path, *args, **kwargs):
                if _installed_metadata(path):
                    return real(path, *args, **kwargs)
                self.opened.append(path)
                raise AssertionError(f"the device opened a file: {path}")

            return opener

        builtins.open = io.open = guarded(saved_open)
        os.open = guarded(saved_os_open)
        return self

    def __exit__(self, *exc):
        builtins.open, io.open, os.open = self.saved


def deliver(message):
    """Send one message; return the reply; check no file was opened, memory stayed low."""
    tracemalloc.start()
    try:
        with NoFiles() as guard:
            [reply] = GRID.send_and_receive([message])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not guard.opened
    assert peak < BUDGET, peak
    COUNT["messages"] += 1
    return reply


def test_an_honest_train_message_trains():
    reply = deliver(train_message())
    assert not reply.has_error(), reply.error.reason
    assert reply.content[protocol.METRICS]["num_examples"] == 24


# --- hostile instructions ----------------------------------------------------------------------

INT_KEYS = ["round", "local_epochs", "batch_size", "seed"]
FLOAT_KEYS = ["learning_rate", "momentum", "weight_decay", "proximal_mu"]
JUNK = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(-3, 3), min_size=1, max_size=3),
    st.booleans(),
)
HUGE_MODELS = [
    {"name": "mlp", "kwargs": {"input_dim": 10**5, "num_classes": 10, "hidden": [10**5]}},
    {"name": "logreg", "kwargs": {"input_dim": 10**9, "num_classes": 10**3}},
    {"name": "cnn", "kwargs": {"num_classes": 10, "input_shape": [4096, 4096, 3]}},
    {"name": "lstm", "kwargs": {"vocab_size": 10**7, "embed_dim": 4096}},
    {"name": "tiny_gpt", "kwargs": {"vocab_size": 10**6, "embed_dim": 8192, "n_layers": 64}},
]
BAD_MODELS = [
    {"name": "os:system", "kwargs": {}},
    {"name": "subprocess:run", "kwargs": {"args": "true"}},
    {"name": "onnx:/etc/passwd", "kwargs": {}},
    {"name": "no_such_model", "kwargs": {}},
    {"name": "logreg", "kwargs": {"input_dim": "8", "num_classes": 2}},
    {"name": "logreg", "kwargs": {"input_dim": 8, "num_classes": 2, "evil": 1}},
    {"name": "logreg", "kwargs": {"input_dim": 9, "num_classes": 2}},  # not the vector sent
    {"name": "logreg", "kwargs": {"input_dim": [[8]], "num_classes": 2}},
    {"name": "logreg"},
    {"name": 5, "kwargs": {}},
    [],
]


@st.composite
def hostile_instructions(draw):
    config = honest_config()
    kind = draw(st.sampled_from(["drop", "int", "float", "model", "huge", "text", "codec"]))
    if kind == "drop":
        del config[draw(st.sampled_from(["round", "model", "seed"]))]
    elif kind == "int":
        bad = st.one_of(
            JUNK.filter(lambda v: not isinstance(v, bool)),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(2**70), -1),
            st.integers(2**64, 2**70),
        )
        config[draw(st.sampled_from(INT_KEYS))] = draw(bad)
    elif kind == "float":
        config[draw(st.sampled_from(FLOAT_KEYS))] = draw(
            st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -1.0]), JUNK)
        )
    elif kind == "model":
        config["model"] = json.dumps(draw(st.sampled_from(BAD_MODELS)))
    elif kind == "huge":
        config["model"] = json.dumps(draw(st.sampled_from(HUGE_MODELS)))
    elif kind == "text":
        config[draw(st.sampled_from(["model", "compression_options"]))] = draw(
            st.one_of(
                st.text(max_size=40),
                st.just("[" * 5000),
                st.just("{" + '"a": 1, ' * 20_000 + '"b": 2}'),
                st.just("x" * 70_000),
            )
        )
    else:
        name, options = draw(
            st.sampled_from(
                [
                    ("zip", "{}"),
                    ("int8", '{"block": 1}'),
                    ("int8", '{"bogus": 3}'),
                    ("topk", '{"ratio": 5}'),
                    ("topk", "[]"),
                ]
            )
        )
        config["compression"], config["compression_options"] = name, options
    return config


@fuzz(250)
@given(config=hostile_instructions())
def test_hostile_instructions_get_an_error_reply(config):
    reply = deliver(train_message(config))
    assert reply.has_error() and reply.error.reason


BAD_VECTORS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(1, 80)),
    st.tuples(st.just("garbage"), st.binary(max_size=200)),
    st.tuples(st.just("dtype"), st.sampled_from(["float64", "int32", "object", "bogus", "<U1"])),
    st.tuples(st.just("shape"), st.sampled_from([(17,), (19,), (10**12,), (3, 6), ()])),
    st.tuples(st.just("values"), st.sampled_from(["float64", "int32", "uint8"])),
    st.tuples(st.just("drop"), st.sampled_from([protocol.GLOBAL, protocol.CONFIG])),
)


@fuzz(120)
@given(change=BAD_VECTORS)
def test_broken_global_vectors_get_an_error_reply(change):
    kind, param = change
    record = vector_record(GLOBAL)
    old = record[VECTOR_KEY]
    fields = {"dtype": old.dtype, "shape": tuple(old.shape), "stype": old.stype}
    fields["data"] = bytes(old.data)
    drop = ()
    if kind == "truncate":
        fields["data"] = fields["data"][:-param]
    elif kind == "garbage":
        fields["data"] = param
    elif kind == "dtype":
        fields["dtype"] = param
    elif kind == "shape":
        fields["shape"] = param
    elif kind == "values":
        record = ArrayRecord({VECTOR_KEY: Array(GLOBAL.astype(param))})
    else:
        drop = (param,)
    if kind not in ("values", "drop"):
        record = ArrayRecord({VECTOR_KEY: Array(**fields)})
    reply = deliver(train_message(vector_record_=record, drop=drop))
    assert reply.has_error() and reply.error.reason


SECAGG_TYPES = {
    "query.secagg_advertise": messages.KeysRequest,
    "query.secagg_share": messages.ShareRequest,
    "train.secagg_masked": messages.MaskRequest,
    "query.secagg_check": messages.CheckRequest,
    "query.secagg_unmask": messages.UnmaskRequest,
}


@fuzz(150)
@given(
    message_type=st.sampled_from(sorted(SECAGG_TYPES)),
    body=st.one_of(st.binary(max_size=300), st.just(b"\xff" * 64)),
    stage=st.sampled_from(["advertise", "share", "masked", "check", "unmask", "x"]),
)
def test_garbage_secagg_requests_get_an_error_reply(message_type, body, stage):
    content = RecordDict({messages.RECORD: ConfigRecord({"stage": stage, "body": body})})
    reply = deliver(Message(content, NODE, message_type, group_id="1"))
    assert reply.has_error() and reply.error.reason


@pytest.mark.parametrize("count", [0, 33, 2**40, 2**64 - 1])
def test_a_key_request_for_absurdly_many_keys_is_refused(count):
    request = messages.KeysRequest(b"s" * 16, count)
    reply = deliver(Message(messages.to_content(request), NODE, "query.secagg_advertise"))
    assert reply.has_error() and "key pairs" in reply.error.reason


@fuzz(60)
@given(
    scenario=st.one_of(
        st.sampled_from(["/etc/passwd", "/dev/zero", "~/.ssh/id_rsa", "relative/path.toml"]),
        st.just("x = 1\n" * 300_000),
        st.binary(max_size=50),
        st.integers(),
        st.text(max_size=50).filter(lambda t: "\n" not in t and "=" not in t and t.strip()),
    )
)
def test_a_device_refuses_run_configs_that_name_paths_or_are_oversized(scenario):
    from deploy.node import NodeConfigError, NodeData

    node = NodeData.parse({"dataset": "digits", "partition-id": 0})
    with NoFiles() as guard, pytest.raises(NodeConfigError):
        node.load({"scenario": scenario})
    assert not guard.opened
    COUNT["messages"] += 1


def test_the_device_still_trains_after_all_that():
    reply = deliver(train_message())
    assert not reply.has_error(), reply.error.reason
    if COUNT["messages"] > 100:  # the whole module ran
        assert COUNT["messages"] >= 500
