"""A client's active-adversary checks in SecAgg+ (Bonawitz et al., CCS 2017), with identities.

A device that holds an identity (its enrolled signing key, its identity certificate and the
operator's CA: ``fedcore.secagg.identity``) never trusts the server about who its neighbours
are or who survived:

- it signs every key pair it advertises, and before it encrypts a share to a neighbour it
  checks that neighbour's certificate against the CA (a device identity, another name than
  its own, no name twice) and the neighbour's signature of the keys the server relayed, so the
  server cannot slip in keys it made itself (``check_neighbours``);
- after the masked-input stage it signs the survivor set U3 the server announces, once per
  round (``sign_survivors``); before unmasking it needs the signatures of at least t distinct
  neighbours over that same U3, and it reveals b shares exactly for its neighbours in U3 and
  s shares exactly for those that shared keys but are not in U3 (``check_unmask``). A server
  that tells different clients different survivor sets cannot gather t signatures for each.

Each check raises ``ProtocolViolation``: the client refuses, and takes no further part in the
round. A device with an identity refuses a round that skips these checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedcore.secagg.errors import ProtocolViolation
from fedcore.secagg.identity import (
    Authority,
    Identity,
    InvalidIdentity,
    keys_message,
    survivors_message,
)
from fedcore.secagg.messages import CheckRequest, ShareRequest, UnmaskRequest

if TYPE_CHECKING:
    from client_runtime.secagg import ClientState


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise ProtocolViolation(reason)


def sign_keys(identity: Identity, c_pks: Sequence[bytes], s_pks: Sequence[bytes]) -> tuple:
    """One signature per advertised key pair."""
    return tuple(identity.sign(keys_message(c, s)) for c, s in zip(c_pks, s_pks, strict=True))


def check_neighbours(authority: Authority, identity: Identity, request: ShareRequest) -> None:
    """``ProtocolViolation`` unless every neighbour's keys are signed under a CA-issued device
    identity, each a different device and none this one."""
    peers = request.neighbours
    _expect(
        len(request.certs) == len(peers) == len(request.sigs),
        "identity: the server sent no identity certificate and signature for every neighbour "
        "(this device takes part only in identity-checked secure aggregation)",
    )
    names = set()
    for peer, cert, sig, c_pk, s_pk in zip(
        peers, request.certs, request.sigs, request.c_pks, request.s_pks, strict=True
    ):
        try:
            who = authority.verify(cert)
            who.verify(sig, keys_message(c_pk, s_pk), f"keys of neighbour {peer}")
        except InvalidIdentity as exc:
            raise ProtocolViolation(f"identity: neighbour {peer}: {exc}") from None
        _expect(who.name != identity.name, f"identity: neighbour {peer} presents this device's")
        _expect(who.name not in names, f"identity: {who.name!r} appears as two neighbours")
        names.add(who.name)


def sign_survivors(identity: Identity, state: ClientState, request: CheckRequest) -> bytes:
    """Check the announced U3 and sign it (the caller answers this once per round)."""
    u3 = request.survivors
    _expect(list(u3) == sorted(set(u3)), "survivor set is not sorted and distinct")
    _expect(all(1 <= i <= state.n for i in u3), "survivor set names a non-participant")
    _expect(state.index in u3, "this client's masked input is not in the survivor set")
    mine = set(u3) & set(state.neighbours)
    _expect(mine <= set(state.senders), "a neighbour in the survivor set did not share keys")
    _expect(len(mine) >= state.t, f"only {len(mine)} neighbours survived; t = {state.t}")
    return identity.sign(survivors_message(state.session, state.round, u3))


def check_unmask(authority: Authority, state: ClientState, request: UnmaskRequest) -> None:
    """``ProtocolViolation`` unless t distinct neighbours signed the U3 this client signed,
    and the request asks exactly for what that U3 implies."""
    u3 = set(state.u3)
    senders = set(state.senders)
    _expect(set(request.survivors) == senders & u3, "survivors differ from the signed set")
    _expect(set(request.dropped) == senders - u3, "dropouts differ from the signed set")
    signers = request.signers
    _expect(len(set(signers)) == len(signers), "signer list has duplicates")
    _expect(len(request.signatures) == len(signers), "signature list mismatch")
    _expect(
        set(signers) <= (senders & u3) - {state.index},
        "a signer is not a surviving neighbour",
    )
    _expect(
        len(signers) >= state.t,
        f"only {len(signers)} neighbours signed the survivor set; t = {state.t}",
    )
    certs = dict(zip(state.peers, state.peer_certs, strict=True))
    data = survivors_message(state.session, state.round, state.u3)
    for signer, signature in zip(signers, request.signatures, strict=True):
        try:
            authority.verify(certs[signer]).verify(signature, data, f"survivor set ({signer})")
        except InvalidIdentity as exc:
            raise ProtocolViolation(f"consistency check: {exc}") from None


__all__ = ["check_neighbours", "check_unmask", "sign_keys", "sign_survivors"]
