"""Update compression: codecs round-trip, shrink the wire, stay unbiased; error feedback."""

import numpy as np
import pytest
from flwr.app import RecordDict

from client_runtime.compression import RESIDUAL, compress_update
from fedcore import compression
from fedcore.wire import array_view


@pytest.mark.parametrize("codec, ratio", [("int8", 3.9), ("int4", 7.5)])
def test_quantizers_round_trip_within_one_step_and_shrink(codec, ratio):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_001).astype(np.float32)
    payload = compression.encode(codec, x, rng)
    y = compression.decode(codec, payload, x.size)
    assert y.dtype == np.float32 and y.shape == x.shape
    step = np.repeat(payload["step"], 1024)[: x.size]
    assert (np.abs(y - x) <= step * 1.0001).all()
    assert x.nbytes / sum(a.nbytes for a in payload.values()) > ratio


def test_stochastic_rounding_is_unbiased():
    x = np.full(4096, 0.3, np.float32)
    x[0], x[1] = 0.0, 1.0  # the block's range: codes step by 1/15
    means = [
        compression.decode("int4", compression.encode("int4", x, np.random.default_rng(s)), 4096)
        for s in range(200)
    ]
    assert abs(float(np.mean(means, axis=0)[2:].mean()) - 0.3) < 1e-3


def test_topk_keeps_the_largest_entries():
    x = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.0], np.float32)
    payload = compression.encode("topk", x, np.random.default_rng(0), ratio=0.34)
    idx, val = compression.decode("topk", payload, x.size, ratio=0.34)
    assert idx.tolist() == [1, 3] and val.tolist() == [-5.0, 3.0]


@pytest.mark.parametrize(
    "codec, arrays, match",
    [
        ("topk", {"idx": np.array([1, 9], np.uint32), "val": np.ones(2, np.float32)}, "range"),
        ("topk", {"idx": np.array([1, 1], np.uint32), "val": np.ones(2, np.float32)}, "repeated"),
        (
            "int8",
            {"q": np.zeros(3, np.uint8), "lo": np.zeros(1, np.float32),
             "step": np.zeros(1, np.float32)},
            "codes",
        ),
    ],
)
def test_malformed_payloads_are_refused(codec, arrays, match):
    with pytest.raises(ValueError, match=match):
        compression.decode(codec, arrays, 5)


def test_unknown_codecs_and_options_are_named():
    with pytest.raises(ValueError, match="known: none, int8, int4, topk"):
        compression.codec_options("zip")
    with pytest.raises(ValueError, match="allowed: ratio"):
        compression.codec_options("topk", {"block": 3})


def test_error_feedback_carries_what_topk_dropped():
    """Two rounds of top-1: the entry dropped in round 1 is sent in round 2."""
    state = RecordDict()
    g = np.zeros(3, np.float32)
    local = np.array([1.0, 0.6, 0.0], np.float32)
    options = {"ratio": 0.34}
    record, codec = compress_update(local, g, "topk", options, state, seed=0)
    assert dict(codec) == {"name": "topk", "ratio": 0.34}
    assert array_view(record["idx"]).tolist() == [0]
    np.testing.assert_allclose(state.array_records[RESIDUAL]["residual"].numpy(), [0, 0.6, 0])
    record, _ = compress_update(np.array([0.5, 0.3, 0.0], np.float32), g, "topk", options,
                                state, seed=1)
    assert array_view(record["idx"]).tolist() == [1]  # 0.3 + 0.6 carried > 0.5
    assert array_view(record["val"]).tolist() == pytest.approx([0.9])
