"""The client's SecAgg+ state machine: order, replays, unsafe requests, and what it sends."""

import dataclasses

import numpy as np
import pytest

from aggregator.secagg.server import SecAggServer
from client_runtime.secagg import ClientState, SecAggClient
from fedcore.secagg.errors import ProtocolViolation
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.messages import KeysRequest, MaskRequest, UnmaskRequest
from fedcore.secagg.params import SecAggParams

N, D = 5, 2000
NODES = [11, 22, 33, 44, 55]


def setup_round(n=N, t=3):
    server = SecAggServer(NODES[:n], SecAggParams(n, n - 1, t), FixedPoint.for_round(n, 4, 10), D)
    clients = {node: SecAggClient(node) for node in NODES[:n]}
    return server, clients


def step(server, clients, skip=()):
    """Run the current stage for every client but ``skip``; return the replies."""
    replies = {}
    for node, request in server.requests().items():
        if node in skip:
            continue
        client = clients[node]
        if server.stage == "advertise":
            reply = client.advertise(request)
        elif server.stage == "share":
            reply = client.share_keys(request)
        elif server.stage == "masked":
            reply = client.masked_input(request, lambda: (np.full(D, 0.25, np.float32), 5, 1.0))
        else:
            reply = client.unmask(request)
        server.receive(node, reply)
        replies[node] = reply
    server.close_stage()
    return replies


def test_stages_must_come_in_order_and_for_this_round():
    server, clients = setup_round()
    client = clients[11]
    with pytest.raises(ProtocolViolation, match="out of order"):
        client.open_shares(MaskRequest(server.session, (), ()))
    step(server, clients)
    request = server.requests()[11]
    with pytest.raises(ProtocolViolation, match="slot 99 is unknown"):
        client.share_keys(dataclasses.replace(request, slot=99))
    client.share_keys(request)
    with pytest.raises(ProtocolViolation, match="replayed"):
        client.share_keys(request)
    with pytest.raises(ProtocolViolation, match="another round"):
        client.open_shares(MaskRequest(b"x" * 16, (), ()))
    with pytest.raises(ProtocolViolation, match="out of order"):
        client.unmask(UnmaskRequest(server.session, (), ()))


def test_a_key_slot_serves_one_round_only():
    server, clients = setup_round()
    reply = clients[11].advertise(KeysRequest(server.session, 3))
    assert reply.slots == (0, 1, 2) and len(set(reply.c_pks + reply.s_pks)) == 6
    step(server, clients)  # the server's own advertise stage: slots start afresh
    request = server.requests()[11]
    assert request.slot == 3
    clients[11].share_keys(request)
    assert 3 not in clients[11].state.slots
    with pytest.raises(ProtocolViolation, match="too many|asked for"):
        clients[11].advertise(KeysRequest(server.session, 10_000))


def test_unsafe_requests_are_refused():
    server, clients = setup_round()
    step(server, clients)
    outsider = SecAggClient(99)
    outsider.advertise(KeysRequest(server.session, 1))
    with pytest.raises(ProtocolViolation, match="not a participant"):
        outsider.share_keys(dataclasses.replace(server.requests()[11], slot=0))
    request = server.requests()[11]
    with pytest.raises(ProtocolViolation, match="not all distinct"):
        clients[11].share_keys(dataclasses.replace(request, s_pks=request.c_pks))
    few = dataclasses.replace(
        request, neighbours=request.neighbours[:1], c_pks=request.c_pks[:1], s_pks=request.s_pks[:1]
    )
    with pytest.raises(ProtocolViolation, match="only 1 neighbours"):
        clients[11].share_keys(few)
    step(server, clients)
    step(server, clients)
    request = server.requests()[11]
    both = dataclasses.replace(request, dropped=request.survivors[:1])
    with pytest.raises(ProtocolViolation, match="both as survivor and dropped"):
        clients[11].unmask(both)
    few = dataclasses.replace(request, survivors=request.survivors[:1])
    with pytest.raises(ProtocolViolation, match="survived"):
        clients[11].unmask(few)
    clients[11].unmask(request)
    with pytest.raises(ProtocolViolation, match="out of order"):
        clients[11].unmask(request)  # a second unmasking is never answered


def test_tampered_share_is_rejected_and_reported_but_the_client_still_masks():
    server, clients = setup_round()
    step(server, clients)
    step(server, clients)
    request = server.requests()[11]
    sealed = bytearray(request.ciphertexts[0])
    sealed[20] ^= 0xFF
    ciphertexts = (bytes(sealed), *request.ciphertexts[1:])
    tampered = MaskRequest(request.session, request.senders, ciphertexts)
    reply = clients[11].masked_input(tampered, lambda: (np.zeros(D, np.float32), 5, 1.0))
    assert reply.rejected == (request.senders[0],)
    assert reply.masked.dtype == np.uint32 and reply.masked.size == D + 2
    assert request.senders[0] not in clients[11].state.owners


def test_masked_vector_hides_the_update_and_changes_every_round():
    update = np.full(D, 0.25, np.float32)
    encoding = FixedPoint.for_round(N, 4, 10).encode(update, 5, 1.0)
    vectors = []
    for _ in range(2):
        server, clients = setup_round()
        step(server, clients)
        step(server, clients)
        vectors.append(step(server, clients)[22].masked)
    first, second = vectors
    assert np.mean(first == encoding) < 0.01  # the plain encoding is constant: 0.25 * w_q
    assert np.mean(first == second) < 0.01  # fresh keys and seeds every round
    counts = np.bincount((first >> 29).astype(np.int64), minlength=8)  # top 3 bits
    chi2 = float(((counts - first.size / 8) ** 2 / (first.size / 8)).sum())
    assert chi2 < 40  # 7 degrees of freedom: p < 1e-5 if uniform


def test_state_survives_serialisation_and_forgets_secrets_when_done():
    server, clients = setup_round()
    for _ in range(3):
        step(server, clients)
    state = clients[33].state
    assert ClientState.from_bytes(state.to_bytes()) == state
    step(server, clients)
    done = clients[33].state
    assert done.stage == "done" and not (done.c_sk or done.s_sk or done.seed or done.shares_b)
    assert len(done.slots) == len(server.book._keys[33]) > 0  # topped up for later rounds
