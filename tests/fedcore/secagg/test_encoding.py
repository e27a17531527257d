"""Fixed-point encoding, parameter derivation and stage messages."""

import math

import numpy as np
import pytest

from fedcore.secagg import messages
from fedcore.secagg.errors import ProtocolViolation
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.params import derive_params


@pytest.mark.parametrize("n,clip", [(2, 1.0), (10, 8.0), (1000, 8.0), (65536, 0.5)])
def test_worst_case_sum_never_wraps(n, clip):
    enc = FixedPoint.for_round(n, clip, 50)
    for sign in (1, -1):
        one = enc.encode(np.full(4, sign * 1e9, np.float32), 1e9, 1e9)  # clipped, capped
        total = (one.astype(np.uint64) * n % 2**32).astype(np.uint32)
        mean, weight, loss = enc.decode_sum(total)
        np.testing.assert_allclose(mean, sign * clip, rtol=1e-9)
        assert weight == pytest.approx(n * 50) and loss == pytest.approx(clip)


def test_weighted_mean_within_the_stated_bound():
    rng = np.random.default_rng(3)
    for n in (3, 17, 200):
        enc = FixedPoint.for_round(n, 2.0, 100)
        x = rng.uniform(-2, 2, (n, 500)).astype(np.float32)
        examples = rng.integers(1, 150, n)  # some above max_weight: capped at 100
        total = np.zeros(502, np.uint32)
        for i in range(n):
            total += enc.encode(x[i], examples[i], 0.5)
        mean, weight, loss = enc.decode_sum(total)
        w = np.array([enc.weight_units(e) for e in examples], np.float64)
        exact = (x * w[:, None]).sum(0) / w.sum()
        assert np.abs(mean - exact).max() <= enc.error_bound(n, w.sum())
        assert weight == pytest.approx(np.minimum(examples, 100).sum(), rel=1e-4)
        assert loss == pytest.approx(0.5, abs=enc.error_bound(n, w.sum()))


def test_encoding_refuses_what_it_cannot_represent():
    enc = FixedPoint.for_round(10, 8.0, 10)
    with pytest.raises(ValueError, match="not finite"):
        enc.encode(np.array([1.0, np.nan], np.float32), 5, 0.1)
    with pytest.raises(ValueError, match="positive weight"):
        enc.encode(np.zeros(3, np.float32), 0, 0.1)
    with pytest.raises(ValueError, match="no fractional bits"):
        FixedPoint.for_round(2**30, 8.0, 1)
    with pytest.raises(ValueError, match="weight sum"):
        enc.decode_sum(np.zeros(5, np.uint32))


def test_default_parameters_meet_their_targets():
    small = derive_params(20)
    assert small.complete and (small.k, small.t) == (19, 17)  # tolerates 2 of 20 dropping
    for n in (100, 1000, 5000):
        p = derive_params(n)
        assert p.k % 2 == 0 and p.k < n - 1 and 1 <= p.t <= p.k
        assert p.security_log2 <= -40 and p.correctness_log2 <= -20
        assert p.k <= 6 * math.log2(n)  # O(log n)
    custom = derive_params(1000, k=20)
    assert custom.k == 20 and custom.t < 20 and custom.security_log2 < -10
    assert derive_params(30, k=7).k == 8  # rounded up to even
    assert derive_params(2).t == 1
    with pytest.raises(ValueError, match="cannot tolerate"):
        derive_params(10, dropout=0.5, corruption=0.45)


def test_messages_round_trip_and_reject_what_is_malformed():
    share = messages.ShareReply(b"s" * 16, (2, 2**64 - 1), (b"a", b""), b"c" * 32)
    assert messages.ShareReply.from_config(share.to_config()) == share
    body = share.to_config()["body"]
    for bad, reason in [
        ({"stage": "unmask", "body": body}, "expected a 'share' message"),
        ({"stage": "share"}, "no body"),
        ({"stage": "share", "body": body[:-1]}, "truncated"),
        ({"stage": "share", "body": body + b"x"}, "1 trailing bytes"),
        ({"stage": "share", "body": b"\xff" * 8}, "truncated"),
    ]:
        with pytest.raises(ProtocolViolation, match=reason):
            messages.ShareReply.from_config(bad)
    masked = messages.MaskReply(b"s" * 16, (3,), np.arange(7, dtype=np.uint32))
    parsed = messages.from_content(messages.MaskReply, messages.to_content(masked))
    assert parsed.rejected == (3,)
    np.testing.assert_array_equal(parsed.masked, masked.masked)
    from flwr.app import RecordDict

    with pytest.raises(ProtocolViolation, match="no 'secagg' record"):
        messages.from_content(messages.MaskReply, RecordDict())
