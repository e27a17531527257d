"""SecAgg+ against a malicious server: identities and the consistency check (issue 13, item 6).

The server here is the real ``SecAggServer`` for the honest stages, and a test that rewrites
what it sends where a malicious server would lie.
"""

import dataclasses

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aggregator.secagg import unmask
from aggregator.secagg.keybook import Identities
from aggregator.secagg.server import SecAggServer
from client_runtime.secagg import SecAggClient
from fedcore.secagg import keys
from fedcore.secagg.errors import ProtocolViolation
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.identity import (
    Credentials,
    Identity,
    SimulatedAuthority,
    issue,
    keys_message,
    make_ca,
)
from fedcore.secagg.messages import CheckRequest, UnmaskRequest
from fedcore.secagg.params import SecAggParams

D = 40
UPDATES = {i: np.linspace(-1, 1, D, dtype=np.float32) * (i + 1) / 4 for i in range(8)}


def make_round(n, k, t, authority=None, admit=None):
    nodes = [100 + i for i in range(n)]
    identities = Identities(authority.authority(), admit) if authority else None
    server = SecAggServer(
        nodes, SecAggParams(n, k, t), FixedPoint.for_round(n, 4, 10), D, round_number=7,
        identities=identities,
    )
    clients = {
        node: SecAggClient(node, credentials=authority.credentials(i) if authority else None)
        for i, node in enumerate(nodes)
    }
    return server, clients


def answer(server, clients, stage_of=None, skip=()):
    """Run the server's current stage honestly; return the replies by node."""
    replies = {}
    for node, request in server.requests().items():
        if node in skip:
            continue
        client, stage = clients[node], server.stage
        if stage == "advertise":
            reply = client.advertise(request)
        elif stage == "share":
            reply = client.share_keys(request)
        elif stage == "masked":
            i = node - 100
            reply = client.masked_input(request, lambda i=i: (UPDATES[i], 5, 0.5))
        elif stage == "check":
            reply = client.check(request)
        else:
            reply = client.unmask(request)
        replies[node] = reply
        server.receive(node, reply)
    server.close_stage()
    return replies


def through_masked(server, clients):
    answer(server, clients)  # advertise
    answer(server, clients)  # share
    return answer(server, clients)  # masked inputs (the server keeps each one)


def recover(server, masked_reply, target, unmask_replies):
    """What a server that collected ``unmask_replies`` learns of client ``target``'s update:
    it rebuilds the target's seed and every neighbour's mask key, and strips the masks from
    the target's masked input alone."""
    for index, reply in unmask_replies.items():
        for owner, row in zip(reply.owners, np.frombuffer(reply.shares, "<u4").reshape(-1, 16),
                              strict=True):
            server.known.shares.setdefault(owner, []).append((index, row.tobytes()))
    others = frozenset(server.neighbours[target])
    server.survivors["masked"] = frozenset({target})
    seeds, secret_keys = unmask.reconstruct(server, frozenset({target}), others)
    correction = unmask.masks_to_remove(server, seeds, secret_keys)
    alone = masked_reply.masked - correction
    return server.encoding.decode_sum(alone)[0]


def lie_about_survivors(server):
    """n = 4, k = 3, t = 2: tell B, C and D that only A and themselves survived, so each
    reveals A's seed and the mask keys of the two others (never both secrets of one)."""
    target, liars = 1, (2, 3, 4)
    return target, {
        i: UnmaskRequest(server.session, (target,), tuple(j for j in liars if j != i))
        for i in liars
    }


def test_without_identities_a_lying_server_recovers_one_update():
    """The limitation the README states: without identities the server must be honest."""
    server, clients = make_round(4, 3, 2)
    masked = through_masked(server, clients)
    target, requests = lie_about_survivors(server)
    replies = {i: clients[99 + i].unmask(r) for i, r in requests.items()}
    update = recover(server, masked[100], target, replies)
    np.testing.assert_allclose(update, UPDATES[0], atol=1e-3)  # A's update, exactly


def test_with_identities_inconsistent_survivor_sets_are_refused():
    authority = SimulatedAuthority.create()
    server, clients = make_round(4, 3, 2, authority)
    through_masked(server, clients)
    target, requests = lie_about_survivors(server)
    # shown "its" own U3 = {A, itself}, no client signs: too few of its neighbours survived
    for i in requests:
        with pytest.raises(ProtocolViolation, match="neighbours survived"):
            clients[99 + i].check(CheckRequest(server.session, (target, i)))
    # shown the true U3, every client signs it; the lying unmask requests then disagree with it
    u3 = (1, 2, 3, 4)
    signatures = {i: clients[99 + i].check(CheckRequest(server.session, u3)).signature
                  for i in u3}
    for i, request in requests.items():
        signers = tuple(j for j in u3 if j != i)
        forged = dataclasses.replace(
            request, signers=signers, signatures=tuple(signatures[j] for j in signers)
        )
        with pytest.raises(ProtocolViolation, match="differ from the signed set"):
            clients[99 + i].unmask(forged)
        assert clients[99 + i].state.stage == "checked"  # nothing revealed, nothing forgotten


def test_the_issues_split_survived_dropped_gets_no_shares():
    """t = 3, k = 4: two neighbours of A are told it survived, two that it dropped."""
    authority = SimulatedAuthority.create()
    server, clients = make_round(5, 4, 3, authority)
    through_masked(server, clients)
    with_a, without_a = (1, 2, 3, 4, 5), (2, 3, 4, 5)
    views = {1: with_a, 2: with_a, 3: with_a, 4: without_a, 5: without_a}
    signatures = {}
    for i, u3 in views.items():
        signatures[i] = clients[99 + i].check(CheckRequest(server.session, u3)).signature
    for i in (2, 3, 4, 5):
        signers = tuple(j for j in views if j != i and views[j] == views[i])
        survivors = tuple(j for j in views[i] if j != i)
        dropped = tuple(j for j in range(1, 6) if j not in views[i] and j != i)
        request = UnmaskRequest(server.session, survivors, dropped, 0, signers,
                                tuple(signatures[j] for j in signers))
        with pytest.raises(ProtocolViolation, match="signed the survivor set"):
            clients[99 + i].unmask(request)


def test_forged_signatures_and_a_replayed_set_are_refused():
    authority = SimulatedAuthority.create()
    server, clients = make_round(4, 3, 2, authority)
    through_masked(server, clients)
    answer(server, clients)  # the honest consistency check
    request = server.requests()[101]
    garbled = (request.signatures[0][:-2] + b"\0\0", *request.signatures[1:])
    with pytest.raises(ProtocolViolation, match="signature"):
        clients[101].unmask(dataclasses.replace(request, signatures=garbled))
    wrong = (request.signers[0], request.signers[0], *request.signers[2:])
    with pytest.raises(ProtocolViolation, match="duplicates"):
        clients[101].unmask(dataclasses.replace(request, signers=wrong))
    clients[101].unmask(request)  # the honest request still works
    with pytest.raises(ProtocolViolation, match="out of order"):
        clients[102].check(CheckRequest(server.session, (1, 2, 3, 4)))  # signs once a round


def _share_request(authority, n=4, t=2):
    server, clients = make_round(n, n - 1, t, authority)
    answer(server, clients)
    return server, clients, server.requests()[100]


def test_a_substituted_neighbour_key_is_caught():
    authority = SimulatedAuthority.create()
    server, clients, request = _share_request(authority)
    fake = keys.KeyPair.generate()
    swapped = dataclasses.replace(request, c_pks=(fake.public, *request.c_pks[1:]))
    with pytest.raises(ProtocolViolation, match="signature"):
        clients[100].share_keys(swapped)
    # the server signs its own keys under a certificate it made: not the operator's CA
    rogue_key, rogue_ca = make_ca("not the operator's CA")
    own = ec.generate_private_key(ec.SECP256R1())
    cert = issue(rogue_key, rogue_ca, "node-1", own.public_key()).public_bytes(
        serialization.Encoding.DER)
    impostor = Identity(own, cert, "node-1")
    sig = impostor.sign(keys_message(fake.public, request.s_pks[0]))
    forged = dataclasses.replace(
        request,
        c_pks=(fake.public, *request.c_pks[1:]),
        certs=(cert, *request.certs[1:]),
        sigs=(sig, *request.sigs[1:]),
    )
    with pytest.raises(ProtocolViolation, match="not issued by this CA"):
        clients[100].share_keys(forged)


def test_a_certificate_that_is_not_a_device_identity_or_appears_twice_is_refused():
    authority = SimulatedAuthority.create()
    server, clients, request = _share_request(authority)
    ca_key = serialization.load_pem_private_key(authority.ca_key_pem, None)
    ca = x509.load_pem_x509_certificate(authority.ca_pem)
    own = ec.generate_private_key(ec.SECP256R1())  # e.g. the SuperLink's TLS key
    builder = issue(ca_key, ca, "superlink", own.public_key())
    tls = x509.CertificateBuilder(
        subject_name=builder.subject, issuer_name=builder.issuer, public_key=own.public_key(),
        serial_number=builder.serial_number, not_valid_before=builder.not_valid_before_utc,
        not_valid_after=builder.not_valid_after_utc,
    ).sign(ca_key, builder.signature_hash_algorithm)  # same CA, no device-identity usage
    der = tls.public_bytes(serialization.Encoding.DER)
    sig = Identity(own, der, "superlink").sign(keys_message(request.c_pks[0], request.s_pks[0]))
    forged = dataclasses.replace(
        request, certs=(der, *request.certs[1:]), sigs=(sig, *request.sigs[1:])
    )
    with pytest.raises(ProtocolViolation, match="not issued by this CA|device identity"):
        clients[100].share_keys(forged)
    twice = dataclasses.replace(request, certs=(request.certs[0],) * 3, sigs=(request.sigs[0],) * 3)
    with pytest.raises(ProtocolViolation):
        clients[100].share_keys(twice)


def test_a_device_with_an_identity_refuses_a_round_without_the_checks():
    authority = SimulatedAuthority.create()
    server, clients = make_round(4, 3, 2)  # the server runs no checks
    checked = SecAggClient(100, credentials=authority.credentials(0))
    clients[100] = checked
    answer(server, clients)
    with pytest.raises(ProtocolViolation, match="identity-checked"):
        checked.share_keys(server.requests()[100])


def test_revoked_and_unknown_identities_are_dropped_by_the_server():
    authority = SimulatedAuthority.create()
    stranger = SimulatedAuthority.create()
    revoked = {"node-2"}
    server, clients = make_round(
        6, 5, 3, authority, admit=lambda node, peer: "revoked" if peer.name in revoked else None
    )
    clients[105] = SecAggClient(105, credentials=Credentials(stranger.identity(5),
                                                             authority.authority()))
    answer(server, clients)  # advertise
    assert "revoked" in server.dropouts[3].reason
    assert "not issued by this CA" in server.dropouts[6].reason
    answer(server, clients)
    answer(server, clients)
    answer(server, clients)  # check
    answer(server, clients)  # unmask
    total = server.result()
    mean = server.encoding.decode_sum(total)[0]
    expected = np.mean([UPDATES[i] for i in (0, 1, 3, 4)], axis=0)
    np.testing.assert_allclose(mean, expected, atol=1e-3)


def test_an_honest_round_with_identities_sums_bit_identically():
    results = []
    for authority in (None, SimulatedAuthority.create()):
        server, clients = make_round(6, 5, 4, authority)
        while server.stage != "done":
            answer(server, clients, skip=(104,) if server.stage == "masked" else ())
        results.append(server.result())
    assert results[0].tobytes() == results[1].tobytes()
