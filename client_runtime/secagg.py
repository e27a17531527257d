"""The client side of SecAgg+: a state machine over the protocol's stages.

``SecAggClient`` is the protocol alone (no Flower): idle -> shared -> masked -> done for each
round, plus a key ring of advertised key pairs kept across rounds (stage 0 fills it; the
share-keys request names the slot to use, and a slot serves once). A client with
``Credentials`` (an enrolled identity) also runs the active-adversary checks of
``client_runtime.consistency`` (masked -> checked -> done) and refuses a round without
them. Each stage checks that the server's request is for this round (session), in order,
well formed and safe to answer (Bonawitz et al.'s checks: enough neighbours, never both
shares of one client), and raises ``ProtocolViolation`` with the reason otherwise; the
handler then answers with an error and the server counts this client as dropped.
``client_runtime.secagg_app`` adds the stage handlers to a ``ClientApp``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client_runtime import consistency
from fedcore.secagg import aead, codec, graph, keys, shamir
from fedcore.secagg.errors import DecryptionFailed, InvalidKey, ProtocolViolation
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.identity import Credentials
from fedcore.secagg.messages import (
    CheckReply,
    CheckRequest,
    KeysReply,
    KeysRequest,
    MaskReply,
    MaskRequest,
    ShareReply,
    ShareRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.prg import apply_mask

MAX_KEYS_AHEAD = 32  # unused key pairs a client keeps at most
_KEYRING = ("next_slot", "slots", "slot_c_sks", "slot_s_sks", "used_sessions")
SHARE_WORDS = shamir.CHUNKS
_PLAINTEXT_BYTES = 8 + 2 * 4 * SHARE_WORDS


@dataclass
class ClientState:
    """Everything a client remembers between stages (bytes, ints and tuples only): its key
    ring (advertised, unused key pairs by slot) and the current round's state."""

    next_slot: int = 0
    slots: tuple[int, ...] = ()  # unused advertised key slots, ascending
    slot_c_sks: tuple[bytes, ...] = ()
    slot_s_sks: tuple[bytes, ...] = ()
    used_sessions: tuple[bytes, ...] = ()  # the last few rounds answered (replays)
    stage: str = "idle"
    session: bytes = b""
    round: int = 0
    index: int = 0  # 1-based position in the participant list = Shamir share point
    n: int = 0
    k: int = 0
    t: int = 0
    neighbours: tuple[int, ...] = ()  # graph neighbours (indices)
    clip: float = 0.0
    frac_bits: int = 0
    max_weight: float = 0.0
    vector_size: int = 0
    c_sk: bytes = b""
    s_sk: bytes = b""
    seed: bytes = b""  # the self-mask seed b
    peers: tuple[int, ...] = ()  # neighbours that advertised keys (U1), with their keys
    peer_c_pks: tuple[bytes, ...] = ()
    peer_s_pks: tuple[bytes, ...] = ()
    peer_certs: tuple[bytes, ...] = ()  # with identities: the neighbours' certificates
    share_keys: tuple[bytes, ...] = ()  # AEAD keys agreed with each peer (both directions)
    senders: tuple[int, ...] = ()  # neighbours that shared keys (U2): masked with
    owners: tuple[int, ...] = ()  # whose shares this client holds
    shares_s: bytes = b""  # len(owners) x 16 '<u4' words each
    shares_b: bytes = b""
    rejected: tuple[int, ...] = ()
    u3: tuple[int, ...] = ()  # with identities: the survivor set this client signed

    def to_bytes(self) -> bytes:
        """A compact binary encoding (``fedcore.secagg.codec``) to keep in ``context.state``."""
        return codec.pack(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        """Inverse of ``to_bytes``."""
        return codec.unpack(cls, data)


def _expect(condition: bool, reason: str) -> None:
    if not condition:
        raise ProtocolViolation(reason)


class SecAggClient:
    """One client's part in one round of SecAgg+ (see the module docstring)."""

    def __init__(
        self, node_id: int, state: ClientState | None = None, credentials: Credentials | None = None
    ) -> None:
        self.node_id = node_id
        self.state = state or ClientState()
        self.credentials = credentials
        self._parsed: dict[bytes, X25519PrivateKey] = {}

    def _key(self, raw: bytes) -> X25519PrivateKey:
        """A private key parsed once per client object (X25519 parsing is not free)."""
        if raw not in self._parsed:
            self._parsed[raw] = keys.load_private(raw)
        return self._parsed[raw]

    def _require(self, stage: str, session: bytes) -> None:
        s = self.state
        _expect(s.stage == stage, f"message out of order: client is at stage {s.stage!r}")
        _expect(session == s.session, "message is for another round (session mismatch)")

    # -- stage 0 ---------------------------------------------------------------------------
    def advertise(self, request: KeysRequest) -> KeysReply:
        """Make ``request.count`` fresh key pairs for coming rounds; return their public keys.

        Unused older pairs are discarded: the server asks only when it holds none of them."""
        _expect(1 <= request.count <= MAX_KEYS_AHEAD, f"asked for {request.count} key pairs")
        # the server holds none of this client's unused keys: start the ring afresh
        self.state = dataclasses.replace(self.state, slots=(), slot_c_sks=(), slot_s_sks=())
        slots, c_pks, s_pks = self._new_keys(request.count)
        cert = self.credentials.identity.cert if self.credentials else b""
        return KeysReply(request.session, slots, c_pks, s_pks, cert, self._sign(c_pks, s_pks))

    def _sign(self, c_pks: tuple[bytes, ...], s_pks: tuple[bytes, ...]) -> tuple[bytes, ...]:
        if self.credentials is None:
            return ()
        return consistency.sign_keys(self.credentials.identity, c_pks, s_pks)

    def _new_keys(self, count: int) -> tuple[tuple[int, ...], tuple[bytes, ...], tuple[bytes, ...]]:
        s = self.state
        room = max(0, MAX_KEYS_AHEAD - len(s.slots))
        count = min(count, room)
        pairs = [(keys.KeyPair.generate(), keys.KeyPair.generate()) for _ in range(count)]
        slots = tuple(range(s.next_slot, s.next_slot + count))
        self.state = dataclasses.replace(
            s,
            next_slot=s.next_slot + count,
            slots=s.slots + slots,
            slot_c_sks=s.slot_c_sks + tuple(c.private for c, _ in pairs),
            slot_s_sks=s.slot_s_sks + tuple(k.private for _, k in pairs),
        )
        return slots, tuple(c.public for c, _ in pairs), tuple(k.public for _, k in pairs)

    def _take_slot(self, slot: int) -> tuple[bytes, bytes]:
        """The key pairs of ``slot``, used once: it and every older slot are forgotten."""
        s = self.state
        _expect(slot in s.slots, f"key slot {slot} is unknown or already used")
        at = s.slots.index(slot)
        self.state = dataclasses.replace(
            s,
            slots=s.slots[at + 1 :],
            slot_c_sks=s.slot_c_sks[at + 1 :],
            slot_s_sks=s.slot_s_sks[at + 1 :],
        )
        return s.slot_c_sks[at], s.slot_s_sks[at]

    def _check_setup(self, setup: ShareRequest) -> int:
        """Validate the round's parameters; return this client's index."""
        _expect(len(setup.session) >= 16, "session id too short")
        _expect(setup.session not in self.state.used_sessions, "replayed: round already joined")
        n = len(setup.participants)
        _expect(2 <= n <= shamir.MAX_HOLDERS, f"{n} participants (need 2..{shamir.MAX_HOLDERS})")
        _expect(len(set(setup.participants)) == n, "participant list has duplicates")
        _expect(self.node_id in setup.participants, "this node is not a participant")
        _expect(graph.effective_degree(n, setup.k) == setup.k, f"invalid degree k={setup.k}")
        # t > k/2: no split of one client's neighbours into "it survived" and "it dropped"
        # can reach t twice, so an active server cannot rebuild both of its secrets
        low = setup.k // 2 + 1
        _expect(low <= setup.t <= setup.k, f"threshold t={setup.t} outside {low}..{setup.k}")
        _expect(len(setup.graph_seed) == 32, "graph seed must be 32 bytes")
        _expect(setup.vector_size >= 1, "empty vector")
        encoding_ok = 1 <= setup.frac_bits <= 30 and setup.clip > 0 and setup.max_weight > 0
        _expect(encoding_ok, "invalid fixed-point encoding")
        return setup.participants.index(self.node_id) + 1

    # -- stage 1 ---------------------------------------------------------------------------
    def share_keys(self, request: ShareRequest) -> ShareReply:
        """Join the round: check its setup, take the key pair of the slot the server names,
        and Shamir-share the pairwise secret key and a fresh self-mask seed among the
        neighbours, one AEAD ciphertext per neighbour."""
        index = self._check_setup(request)
        n, t = len(request.participants), request.t
        graph_nbrs = graph.neighbours_of(index - 1, n, request.k, request.graph_seed)
        nbrs = tuple(int(j) + 1 for j in graph_nbrs)
        peers = request.neighbours
        _expect(len(set(peers)) == len(peers), "neighbour list has duplicates")
        _expect(set(peers) <= set(nbrs), "a listed client is not a graph neighbour")
        _expect(len(request.c_pks) == len(peers) == len(request.s_pks), "key lists mismatch")
        all_keys = [*request.c_pks, *request.s_pks]
        _expect(all(len(k) == keys.KEY_BYTES for k in all_keys), "malformed public key")
        _expect(len(set(all_keys)) == len(all_keys), "public keys are not all distinct")
        for public in all_keys:
            try:
                keys.check_public(public)
            except InvalidKey as exc:
                raise ProtocolViolation(f"neighbour key: {exc}") from None
        _expect(len(peers) >= t, f"only {len(peers)} neighbours advertised keys; t = {t}")
        if self.credentials is not None:
            consistency.check_neighbours(
                self.credentials.authority, self.credentials.identity, request
            )
        c_sk_raw, s_sk_raw = self._take_slot(request.slot)
        keyring = {f: getattr(self.state, f) for f in _KEYRING}
        keyring["used_sessions"] = (*self.state.used_sessions, request.session)[-8:]
        self.state = ClientState(  # a fresh round: nothing of an earlier one carries over
            **keyring,
            stage="joined",
            session=request.session,
            round=request.round,
            index=index,
            n=n,
            k=request.k,
            t=t,
            neighbours=nbrs,
            clip=request.clip,
            frac_bits=request.frac_bits,
            max_weight=request.max_weight,
            vector_size=request.vector_size,
            c_sk=c_sk_raw,
            s_sk=s_sk_raw,
        )
        s = self.state
        seed = os.urandom(32)
        shares = shamir.split([s.s_sk, seed], peers, s.t)  # (2, len(peers), 16)
        ciphertexts, share_keys = [], []
        c_sk = self._key(s.c_sk)
        for j, (peer, c_pk) in enumerate(zip(peers, request.c_pks, strict=True)):
            key = keys.agree(c_sk, c_pk, s.session, keys.PURPOSE_SHARES)
            share_keys.append(key)
            plaintext = (
                s.index.to_bytes(4, "big")
                + peer.to_bytes(4, "big")
                + shares[0, j].astype("<u4").tobytes()
                + shares[1, j].astype("<u4").tobytes()
            )
            ciphertexts.append(
                aead.seal(key, plaintext, aead.associated_data(s.session, s.index, peer))
            )
        self.state = dataclasses.replace(
            s,
            stage="shared",
            seed=seed,
            peers=peers,
            peer_c_pks=request.c_pks,
            peer_s_pks=request.s_pks,
            peer_certs=request.certs if self.credentials is not None else (),
            share_keys=tuple(share_keys),
        )
        return ShareReply(
            s.session, peers, tuple(ciphertexts), keys.commitment(s.session, s.index, seed)
        )

    # -- stage 2 ---------------------------------------------------------------------------
    def open_shares(self, request: MaskRequest) -> None:
        """Check the masked-input request and decrypt the shares addressed to this client;
        ciphertexts that fail authentication are dropped and reported in the reply."""
        self._require("shared", request.session)
        s = self.state
        senders = request.senders
        _expect(len(set(senders)) == len(senders), "sender list has duplicates")
        _expect(set(senders) <= set(s.peers), "a sender did not advertise keys to this client")
        _expect(len(request.ciphertexts) == len(senders), "ciphertext list mismatch")
        _expect(len(senders) >= s.t, f"only {len(senders)} neighbours shared keys; t = {s.t}")
        share_key = dict(zip(s.peers, s.share_keys, strict=True))
        owners, shares_s, shares_b, rejected = [], [], [], []
        for sender, sealed in zip(senders, request.ciphertexts, strict=True):
            try:
                ad = aead.associated_data(s.session, sender, s.index)
                plain = aead.open_sealed(share_key[sender], sealed, ad)
                _check_plaintext(plain, sender, s.index)
            except (DecryptionFailed, ProtocolViolation):
                rejected.append(sender)
                continue
            owners.append(sender)
            shares_s.append(plain[8 : 8 + 4 * SHARE_WORDS])
            shares_b.append(plain[8 + 4 * SHARE_WORDS :])
        self.state = dataclasses.replace(
            s,
            senders=senders,
            owners=tuple(owners),
            shares_s=b"".join(shares_s),
            shares_b=b"".join(shares_b),
            rejected=tuple(rejected),
        )

    def mask(self, update: np.ndarray, num_examples: float, loss: float) -> MaskReply:
        """Encode the update and add the self mask and one pairwise mask per sender."""
        s = self.state
        _expect(s.stage == "shared" and bool(s.senders), "mask() before open_shares()")
        size = s.vector_size
        _expect(update.size == size, f"update of {update.size} values, expected {size}")
        encoding = FixedPoint(s.clip, s.frac_bits, s.max_weight)
        masked = encoding.encode(update, num_examples, loss)
        scratch = np.empty(masked.size + 4, dtype=np.uint32)
        self_key = keys.derive_key(s.seed, s.session, keys.PURPOSE_SELF, s.index.to_bytes(4, "big"))
        apply_mask(masked, self_key, +1, scratch)
        s_pk = dict(zip(s.peers, s.peer_s_pks, strict=True))
        s_sk = self._key(s.s_sk)
        for peer in s.senders:
            key = keys.agree(s_sk, s_pk[peer], s.session, keys.PURPOSE_PAIRWISE)
            apply_mask(masked, key, +1 if s.index < peer else -1, scratch)
        self.state = dataclasses.replace(s, stage="masked")
        return MaskReply(s.session, s.rejected, masked)

    def masked_input(
        self, request: MaskRequest, train: Callable[[], tuple[np.ndarray, float, float]]
    ) -> MaskReply:
        """Open shares, run ``train() -> (update, num_examples, loss)``, mask the update."""
        self.open_shares(request)
        update, num_examples, loss = train()
        return self.mask(update, num_examples, loss)

    # -- consistency check (with identities) ------------------------------------------------
    def check(self, request: CheckRequest) -> CheckReply:
        """Sign the survivor set U3 the server announces (once per round)."""
        self._require("masked", request.session)
        _expect(self.credentials is not None, "this device holds no identity to sign with")
        assert self.credentials is not None
        signature = consistency.sign_survivors(self.credentials.identity, self.state, request)
        self.state = dataclasses.replace(self.state, stage="checked", u3=request.survivors)
        return CheckReply(request.session, signature)

    # -- stage 3 ---------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskReply:
        """Reveal self-mask seed shares of survivors and secret-key shares of dropped
        neighbours, never both for one client; then forget this round's secrets."""
        if self.credentials is None:
            self._require("masked", request.session)
        else:  # only after t neighbours signed the survivor set this client signed
            self._require("checked", request.session)
            consistency.check_unmask(self.credentials.authority, self.state, request)
        s = self.state
        survivors, dropped = set(request.survivors), set(request.dropped)
        _expect(len(survivors) == len(request.survivors), "survivor list has duplicates")
        _expect(len(dropped) == len(request.dropped), "dropout list has duplicates")
        _expect(not survivors & dropped, "a client is listed both as survivor and dropped")
        _expect((survivors | dropped) <= set(s.senders), "a listed client did not share keys")
        _expect(len(survivors) + 1 >= s.t, f"only {len(survivors)} neighbours survived; t = {s.t}")
        held_s = np.frombuffer(s.shares_s, "<u4").reshape(-1, SHARE_WORDS)
        held_b = np.frombuffer(s.shares_b, "<u4").reshape(-1, SHARE_WORDS)
        owners, rows = [], []
        for row, owner in enumerate(s.owners):
            if owner in survivors:
                owners.append(owner)
                rows.append(held_b[row])
            elif owner in dropped:
                owners.append(owner)
                rows.append(held_s[row])
        shares = np.stack(rows).astype("<u4").tobytes() if rows else b""
        self.state = dataclasses.replace(
            ClientState(stage="done", session=s.session, round=s.round, index=s.index),
            **{f: getattr(s, f) for f in _KEYRING},
        )
        slots, c_pks, s_pks = self._new_keys(max(0, min(request.more_keys, MAX_KEYS_AHEAD)))
        sigs = self._sign(c_pks, s_pks)
        return UnmaskReply(s.session, tuple(owners), shares, slots, c_pks, s_pks, sigs)


def _check_plaintext(plain: bytes, sender: int, recipient: int) -> None:
    _expect(len(plain) == _PLAINTEXT_BYTES, "share plaintext has the wrong length")
    _expect(int.from_bytes(plain[:4], "big") == sender, "share claims another sender")
    _expect(int.from_bytes(plain[4:8], "big") == recipient, "share is for another client")
    values = np.frombuffer(plain[8:], "<u4")
    _expect(bool((values < shamir.PRIME).all()), "share values outside the field")


__all__ = ["ClientState", "SecAggClient"]
