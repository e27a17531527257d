"""Advertised SecAgg+ keys on the server: the checks every batch of keys passes, and the book.

``check_keys`` is what the server asks of advertised public keys (well formed, distinct,
large order). With identities (``Identities``: the CA and, in a deployment, the enrolment's
say on who may take part), each batch must also carry the client's identity certificate and
one signature per key pair; a client whose certificate is not the CA's, whose enrolment is
revoked or unknown, or whose signature fails is dropped with that reason. The clients check
the same again (the server is not trusted to); the server checks so that one bad client is
dropped here instead of making its honest neighbours refuse the round.

``KeyBook`` keeps the unused key pairs (and the certificate) each client advertised for
coming rounds, across the rounds of a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedcore.secagg import keys
from fedcore.secagg.errors import InvalidKey, ProtocolViolation
from fedcore.secagg.identity import Authority, InvalidIdentity, Peer, keys_message


@dataclass(frozen=True)
class Advertised:
    """One advertised key pair: its slot, public keys and (with identities) signature."""

    slot: int
    c_pk: bytes
    s_pk: bytes
    sig: bytes = b""


@dataclass
class Identities:
    """What the server checks identities against: the CA, and ``admit(node, peer)`` (a
    refusal reason or None: a deployment's enrolment says whether that node may be that
    name, e.g. not revoked)."""

    authority: Authority
    admit: Callable[[int, Peer], str | None] | None = None

    def check(self, node: int, cert: bytes, batch: Sequence[Advertised]) -> None:
        """``ProtocolViolation`` unless ``cert`` is a device identity of the CA that may take
        part as ``node`` and signed every key pair of ``batch``."""
        try:
            peer = self.authority.verify(cert)
        except InvalidIdentity as exc:
            raise ProtocolViolation(f"identity: {exc}") from None
        refusal = self.admit(node, peer) if self.admit is not None else None
        if refusal is not None:
            raise ProtocolViolation(f"identity {peer.name!r} refused: {refusal}")
        for entry in batch:
            try:
                peer.verify(entry.sig, keys_message(entry.c_pk, entry.s_pk), "advertised keys")
            except InvalidIdentity as exc:
                raise ProtocolViolation(str(exc)) from None


def check_keys(slots: Sequence[int], c_pks: Sequence[bytes], s_pks: Sequence[bytes]) -> None:
    """``ProtocolViolation`` unless the advertised keys are well formed."""
    if not len(slots) == len(c_pks) == len(s_pks):
        raise ProtocolViolation("advertised key lists differ in length")
    if list(slots) != sorted(set(slots)) or any(slot < 0 for slot in slots):
        raise ProtocolViolation("key slots must be distinct, ascending and >= 0")
    if any(len(k) != keys.KEY_BYTES for k in (*c_pks, *s_pks)):
        raise ProtocolViolation("public keys must be 32 bytes")
    if len({*c_pks, *s_pks}) != 2 * len(slots):
        raise ProtocolViolation("advertised public keys are not all distinct")
    for public in (*c_pks, *s_pks):
        try:
            keys.check_public(public)
        except InvalidKey as exc:
            raise ProtocolViolation(str(exc)) from None


def advertised(
    reply: object, identities: Identities | None, node: int, cert: bytes | None = None
) -> list[Advertised]:
    """The checked key pairs of a ``KeysReply`` or an ``UnmaskReply`` (with identities: signed
    under ``cert``, the reply's own or the one the book holds)."""
    slots, c_pks, s_pks = reply.slots, reply.c_pks, reply.s_pks  # type: ignore[attr-defined]
    check_keys(slots, c_pks, s_pks)
    sigs = reply.sigs  # type: ignore[attr-defined]
    if identities is None:
        return [Advertised(*entry) for entry in zip(slots, c_pks, s_pks, strict=True)]
    if len(sigs) != len(slots):
        raise ProtocolViolation("identity: one signature per advertised key pair expected")
    batch = [Advertised(*entry) for entry in zip(slots, c_pks, s_pks, sigs, strict=True)]
    identities.check(node, cert if cert is not None else reply.cert, batch)  # type: ignore[attr-defined]
    return batch


class KeyBook:
    """Public keys clients advertised for coming rounds, by node: unused ``Advertised`` pairs
    (and the certificate they were signed under).

    Kept by the round loop across the rounds of a run, so that a client that has taken part
    before needs no advertise stage. A client that drops out is forgotten (it advertises
    again next time), so a book out of step with a client costs one round, never a wrong sum.
    """

    def __init__(self) -> None:
        self._keys: dict[int, list[Advertised]] = {}
        self.certs: dict[int, bytes] = {}

    def count(self, node: int) -> int:
        """Unused key pairs known for ``node``."""
        return len(self._keys.get(node, ()))

    def take(self, node: int) -> Advertised | None:
        """The oldest unused key pair of ``node`` (removed), or None."""
        queue = self._keys.get(node)
        return queue.pop(0) if queue else None

    def add(self, node: int, batch: Sequence[Advertised], cert: bytes = b"") -> None:
        """Record newly advertised key pairs (slots ascending, after the known ones)."""
        queue = self._keys.setdefault(node, [])
        if cert:
            self.certs[node] = cert
        last = queue[-1].slot if queue else -1
        for entry in batch:
            if entry.slot > last:
                queue.append(entry)
                last = entry.slot

    def forget(self, node: int) -> None:
        """Drop everything known about ``node``."""
        self._keys.pop(node, None)
        self.certs.pop(node, None)


__all__ = ["Advertised", "Identities", "KeyBook", "advertised", "check_keys"]
