"""Issue 13, findings 4, 5 and 6: hostile SecAgg+ participants, and an active server."""

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from aggregator.collect.secagg import SecAggAborted
from aggregator.secagg import SecAggConfig
from client_runtime.secagg import SecAggClient
from fedcore.secagg import messages
from fedcore.secagg.errors import ProtocolViolation
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.messages import KeysReply, KeysRequest, MaskReply, ShareRequest
from fedcore.secagg.params import SecAggParams
from fedcore.wire import vector_record
from simulations.runtimes.inprocess import InProcessGrid

from .test_round import expected_mean, run, toy_app


class TamperGrid(InProcessGrid):
    """Replies of ``partition`` to ``message_type`` pass through ``tamper(reply)``."""

    def __init__(self, app, num_nodes, partition, message_type, tamper, twice=False):
        super().__init__(app, num_nodes)
        self.target = (self.node_id(partition), message_type)
        self.tamper, self.twice = tamper, twice

    def send_and_receive(self, messages, *, timeout=None):
        requests = {m.metadata.dst_node_id: m for m in messages}
        out = []
        for answer in super().send_and_receive(messages, timeout=timeout):
            meta = answer.metadata
            if (meta.src_node_id, meta.message_type) == self.target:
                if self.twice:  # the honest reply, then a second one
                    out.append(answer)
                    answer = self.tamper(requests[meta.src_node_id])
                else:
                    answer = self.tamper(answer)
            out.append(answer)
        return out


def _rewrite(answer, kind, **changes):
    parsed = messages.from_content(kind, answer.content)
    answer.content[messages.RECORD] = ConfigRecord(
        dataclasses.replace(parsed, **changes).to_config()
    )
    return answer


def _masked(answer, change):
    vector = messages.from_content(MaskReply, answer.content).masked.copy()
    change(vector)
    answer.content[messages.MASKED] = vector_record(vector)
    return answer


SETTINGS = SecAggConfig(t=5, max_weight=8)


def _run(partition, message_type, tamper, twice=False):
    grid = TamperGrid(toy_app(), 8, partition, message_type, tamper, twice)
    return run(None, grid=grid, secagg=SETTINGS)


def test_a_low_order_public_key_drops_only_its_sender():  # finding 5
    def zero_key(answer):
        parsed = messages.from_content(KeysReply, answer.content)
        c_pks = (bytes(32), *parsed.c_pks[1:])
        return _rewrite(answer, KeysReply, c_pks=c_pks)

    final, outcomes = _run(3, "query.secagg_advertise", zero_key)
    rejected = {c.client_id: c.reason for c in outcomes[0].clients if not c.accepted}
    assert list(rejected) == [3] and "low-order public key" in rejected[3]
    value, bound = expected_mean([k for k in range(8) if k != 3])
    np.testing.assert_allclose(final, value, atol=bound)


def test_a_sum_pushed_beyond_the_clip_bound_aborts_the_round():  # finding 5
    def push(vector):
        vector[:-2] += np.uint32(2**30)

    with pytest.raises(SecAggAborted, match="beyond the clip"):
        _run(2, "train.secagg_masked", lambda a: _masked(a, push))


def test_one_client_moves_the_mean_anywhere_inside_the_clip_box_unseen():
    """What the sum check does not do: bound each client. A client that skips the clip and
    adds 4.0 x the round's weight to one coordinate of its own words moves that coordinate of
    the mean by 4.0 - six times the 3/36 x clip = 0.67 an honest client of its weight could -
    and the round completes: SecAgg+ bounds the decoded mean (|mean| <= clip), not a contribution
    (ARCHITECTURE.md, "Validation under SecAgg+")."""
    enc = FixedPoint.for_round(8, SETTINGS.clip, SETTINGS.max_weight)
    units = sum(enc.weight_units(k + 1) for k in range(8))  # the round's weight W

    def push(vector):
        vector[0] += np.uint32(round(4.0 * units))  # the masked word, wrapping mod 2^32

    final, outcomes = _run(2, "train.secagg_masked", lambda a: _masked(a, push))
    assert outcomes[0].num_accepted == 8  # nothing refused
    value, bound = expected_mean(range(8))
    assert final[0] == pytest.approx(value + 4.0, abs=bound + 1e-6)
    assert final[0] - value > 5 * enc.weight_units(3) / units * SETTINGS.clip
    np.testing.assert_allclose(final[1:], value, atol=bound)


@pytest.mark.parametrize("delta, match", [(2**31, "decoded weight"), (10**6, "decoded weight")])
def test_a_tampered_weight_word_aborts_the_round_cleanly(delta, match):  # finding 5
    def push(vector):
        vector[-2] += np.uint32(delta)

    with pytest.raises(SecAggAborted, match=match):
        _run(2, "train.secagg_masked", lambda a: _masked(a, push))


def test_a_tampered_loss_word_aborts_the_round():  # finding 5
    def push(vector):
        vector[-1] -= np.uint32(2**30)

    with pytest.raises(SecAggAborted, match="loss"):
        _run(2, "train.secagg_masked", lambda a: _masked(a, push))


def test_a_failure_after_the_masked_input_is_summed_is_ignored():  # finding 5
    from flwr.app import Error, Message

    def second_reply_is_an_error(request):
        return Message(Error(code=0, reason="late failure"), reply_to=request)

    final, outcomes = _run(4, "train.secagg_masked", second_reply_is_an_error, twice=True)
    assert outcomes[0].num_accepted == 8
    value, bound = expected_mean(range(8))
    np.testing.assert_allclose(final, value, atol=bound)


@pytest.mark.parametrize(
    "payload, dtype",
    [(b"\x93NUMPY", "uint32"), (None, "complex-garbage"), (None, "object")],
)
def test_malformed_masked_vectors_drop_their_sender(payload, dtype):  # finding 4
    def garble(answer):
        good = answer.content[messages.MASKED]["vector"]
        data = bytes(good.data) if payload is None else payload
        bad = Array(dtype=dtype, shape=tuple(good.shape), stype=good.stype, data=data)
        answer.content[messages.MASKED] = ArrayRecord({"vector": bad})
        return answer

    final, outcomes = _run(6, "train.secagg_masked", garble)
    rejected = {c.client_id: c.reason for c in outcomes[0].clients if not c.accepted}
    assert list(rejected) == [6] and "masked" in rejected[6]
    value, bound = expected_mean([k for k in range(8) if k != 6])
    np.testing.assert_allclose(final, value, atol=bound)


def _setup_request(t, n=5):
    """A well-formed share-keys request for the first of ``n`` clients (complete graph)."""
    participants = tuple(range(101, 101 + n))
    client = SecAggClient(participants[0])
    slot = client.advertise(KeysRequest(b"s" * 16, 1)).slots[0]
    peers = [SecAggClient(p).advertise(KeysRequest(b"s" * 16, 1)) for p in participants[1:]]
    enc = FixedPoint.for_round(n, 8.0, 8.0)
    request = ShareRequest(
        session=b"r" * 16,
        round=1,
        participants=participants,
        k=n - 1,
        t=t,
        graph_seed=b"g" * 32,
        clip=enc.clip,
        frac_bits=enc.frac_bits,
        max_weight=enc.max_weight,
        vector_size=4,
        slot=slot,
        neighbours=tuple(range(2, n + 1)),
        c_pks=tuple(p.c_pks[0] for p in peers),
        s_pks=tuple(p.s_pks[0] for p in peers),
    )
    return client, request


@pytest.mark.parametrize("t", [1, 2])
def test_clients_refuse_a_threshold_of_at_most_half_the_neighbours(t):  # finding 6
    client, request = _setup_request(t)
    with pytest.raises(ProtocolViolation, match="threshold"):
        client.share_keys(request)


def test_clients_refuse_low_order_neighbour_keys():  # finding 5, client side
    client, request = _setup_request(3)
    hostile = dataclasses.replace(request, s_pks=(bytes(32), *request.s_pks[1:]))
    with pytest.raises(ProtocolViolation, match="low-order"):
        client.share_keys(hostile)


def test_the_server_never_offers_t_at_most_k_over_2():  # finding 6
    with pytest.raises(ValueError, match="t <= k/2"):
        SecAggParams(10, 8, 4)
    client, request = _setup_request(3)
    assert client.share_keys(request).recipients == (2, 3, 4, 5)  # t = 3 > 4/2 is accepted
