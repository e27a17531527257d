"""Issue 13: property-based fuzzing of what SecAgg+ clients send the server. A hostile
participant's advertise, share or masked reply is replaced, truncated, mistyped or made
structurally wrong but parseable; every round completes, every hostile participant is dropped
with a reason and the model is the honest clients' mean within the fixed-point error bound."""

import numpy as np
import pytest
from flwr.app import Error, Message
from hypothesis import given
from hypothesis import strategies as st

from aggregator.secagg import SecAggConfig
from client_runtime.app import partition_id
from fedcore.secagg import messages
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.wire import VECTOR_KEY
from tests.aggregator.fuzz_clients import (
    COUNTS,
    N,
    honest_app,
    hostile_clients,
    one_round,
    replace_array,
)
from tests.fuzzing import fuzz

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
            replace_array(content[messages.MASKED], VECTOR_KEY, **changes)
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
        pytest.skip("run after the fuzz tests of test_fuzz_replies and this module (default order)")
    print("hostile replies tried:", COUNTS)
    assert sum(COUNTS.values()) >= 1000, COUNTS
