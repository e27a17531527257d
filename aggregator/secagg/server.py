"""The server side of SecAgg+ as an explicit state machine over one round.

advertise -> share -> masked [-> check] -> unmask -> done (the consistency check only with
identities: ``aggregator.secagg.keybook.Identities``). For the current stage, ``requests()`` gives
each live client its message, ``receive(node, reply)`` checks and files a reply (a malformed,
replayed or foreign one drops that client, with the reason), ``fail(node, reason)`` records a
client that errored or timed out, and ``close_stage()`` moves on. The sets of clients alive
after each stage are Bonawitz et al.'s U1 (advertised keys), U2 (shared keys), U3 (sent a
masked input) and U4 (helped unmask). Masked inputs are summed as they arrive (one vector of
state, on the array backend when one is given). ``result()`` reconstructs, from the shares U4
hands in, the self-mask seeds of U3 and the pairwise secret keys of U2 \\ U3, removes those
masks and returns the exact sum of U3's encoded inputs, or raises ``Aborted``: never a wrong
sum. With identities, every advertised key pair is signed under a CA-issued identity
certificate (checked here and again by every neighbour), and between the masked-input and
unmasking stages U3 is sent to its members, each signs it, and each unmasking request carries
the neighbours' signatures: a client reveals shares only for the U3 that t of its neighbours
signed (Bonawitz et al.'s consistency check).

Transport-free: the Flower round's collector (``aggregator.collect.secagg``) and the scale benchmark
drive the same object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.secagg import unmask
from aggregator.secagg.keybook import Identities, KeyBook, advertised
from fedcore.secagg import graph, shamir
from fedcore.secagg.errors import Aborted, ProtocolViolation
from fedcore.secagg.fixedpoint import TAIL, FixedPoint
from fedcore.secagg.identity import InvalidIdentity, survivors_message
from fedcore.secagg.messages import (
    CheckReply,
    CheckRequest,
    KeysReply,
    KeysRequest,
    MaskReply,
    MaskRequest,
    Setup,
    ShareReply,
    ShareRequest,
    UnmaskReply,
    UnmaskRequest,
)
from fedcore.secagg.params import SecAggParams

STAGES = ("advertise", "share", "masked", "check", "unmask", "done")
KEYS_AHEAD = 8  # key pairs a client advertises at a time
_REPLY = {
    "advertise": KeysReply,
    "share": ShareReply,
    "masked": MaskReply,
    "check": CheckReply,
    "unmask": UnmaskReply,
}


@dataclass
class Dropout:
    """A client that left the round: at which stage, and why."""

    stage: str
    reason: str


@dataclass
class ServerState:
    """What the server has learnt so far in the round (all public or ciphertext)."""

    slot: dict[int, int] = field(default_factory=dict)  # the key slot each client uses now
    c_pk: dict[int, bytes] = field(default_factory=dict)
    s_pk: dict[int, bytes] = field(default_factory=dict)
    key_sig: dict[int, bytes] = field(default_factory=dict)  # with identities: its signature
    cert: dict[int, bytes] = field(default_factory=dict)  # and the identity certificate
    signatures: dict[int, bytes] = field(default_factory=dict)  # of U3, consistency check
    commitments: dict[int, bytes] = field(default_factory=dict)
    inbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    shares: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    rejected_shares: dict[int, tuple[int, ...]] = field(default_factory=dict)


class SecAggServer:
    """One round of SecAgg+ among ``participants`` (node ids; index = position + 1)."""

    def __init__(
        self,
        participants: Sequence[int],
        params: SecAggParams,
        encoding: FixedPoint,
        vector_size: int,
        round_number: int = 0,
        session: bytes | None = None,
        graph_seed: bytes | None = None,
        backend: Any = None,
        book: KeyBook | None = None,
        keys_ahead: int = KEYS_AHEAD,
        identities: Identities | None = None,
    ) -> None:
        if len(set(participants)) != len(participants) or len(participants) != params.n:
            raise ValueError(f"need {params.n} distinct participants, got {len(participants)}")
        self.nodes = list(participants)
        self.index = {node: i + 1 for i, node in enumerate(self.nodes)}
        self.params = params
        self.encoding = encoding
        self.vector_size = vector_size
        self.setup = Setup(
            session=session or os.urandom(16),
            round=round_number,
            participants=tuple(self.nodes),
            k=params.k,
            t=params.t,
            graph_seed=graph_seed or os.urandom(32),
            clip=encoding.clip,
            frac_bits=encoding.frac_bits,
            max_weight=encoding.max_weight,
            vector_size=vector_size,
        )
        table = graph.neighbours(params.n, params.k, self.setup.graph_seed) + 1
        self.neighbours = {i + 1: frozenset(int(j) for j in row) for i, row in enumerate(table)}
        self.identities = identities
        self.stages = STAGES if identities is not None else tuple(s for s in STAGES if s != "check")
        self.stage = "advertise"
        self.alive: set[int] = set(self.index.values())  # indices still in the round
        self.replied: set[int] = set()
        self.survivors: dict[str, frozenset[int]] = {}  # U1..U4 by the stage that made them
        self.dropouts: dict[int, Dropout] = {}  # by index
        self.known = ServerState()
        self.book = book if book is not None else KeyBook()
        self.keys_ahead = keys_ahead
        for index, node in enumerate(self.nodes, start=1):  # keys advertised in earlier rounds
            entry = self.book.take(node)
            if entry is not None:
                self._use(index, entry, self.book.certs.get(node, b""))
        self.backend = backend  # aggregator.backend.Backend; None: plain numpy
        size = vector_size + TAIL
        if backend is None:
            self.total = np.zeros(size, dtype=np.uint32)
        else:
            self.total = backend.xp.zeros(size, dtype=backend.xp.uint32)

    def _use(self, index: int, entry: Any, cert: bytes) -> None:
        known = self.known
        known.slot[index], known.c_pk[index], known.s_pk[index] = entry.slot, entry.c_pk, entry.s_pk
        known.key_sig[index], known.cert[index] = entry.sig, cert

    @property
    def _setup_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self.setup, f.name) for f in dataclasses.fields(self.setup)}

    @property
    def session(self) -> bytes:
        """This round's random session id."""
        return self.setup.session

    # -- bookkeeping -----------------------------------------------------------------------
    def _drop(self, index: int, reason: str) -> None:
        if index in self.alive:
            self.alive.discard(index)
            self.dropouts[index] = Dropout(self.stage, reason)
            self.book.forget(self.nodes[index - 1])

    def fail(self, node: int, reason: str) -> None:
        """Count ``node`` as dropped in this stage (error reply, timeout, bad message).

        Ignored once the client's masked input is in the sum at the masked stage (e.g. a second,
        erroneous reply): it is one of U3 whatever it sends next, or the sum would be wrong."""
        index = self.index.get(node)
        if index is None or (self.stage == "masked" and index in self.replied):
            return
        self._drop(index, reason)

    def requests(self) -> dict[int, object]:
        """The message for each live client in the current stage, by node id."""
        if self.stage == "advertise":  # only clients without a key pair for this round
            ask = KeysRequest(self.session, self.keys_ahead)
            return {self.nodes[i - 1]: ask for i in sorted(self.alive - set(self.known.slot))}
        make = {
            "share": self._share_request,
            "masked": self._mask_request,
            "check": self._check_request,
            "unmask": self._unmask_request,
        }[self.stage]
        return {self.nodes[i - 1]: make(i) for i in sorted(self.alive)}

    def receive(self, node: int, reply: object) -> None:
        """File one client's reply to the current stage; a bad one drops the client."""
        index = self.index.get(node)
        if index is None or index not in self.alive or index in self.replied:
            return  # not asked, already dropped, or a duplicate: ignore
        try:
            expected = _REPLY[self.stage]
            if not isinstance(reply, expected):
                raise ProtocolViolation(f"expected {expected.__name__}")
            if reply.session != self.session:
                raise ProtocolViolation("reply is for another round (session mismatch)")
            getattr(self, f"_receive_{self.stage}")(index, reply)
        except ProtocolViolation as exc:
            self._drop(index, f"rejected {self.stage} reply: {exc}")
            return
        except Exception as exc:  # whatever a hostile reply breaks drops its sender only
            self._drop(index, f"rejected {self.stage} reply: {type(exc).__name__}: {exc}"[:300])
            return
        self.replied.add(index)

    def close_stage(self) -> None:
        """End the current stage: drop who did not answer, check thresholds, move on."""
        stage = self.stage
        answered = self.replied | (set(self.known.slot) if stage == "advertise" else set())
        for index in sorted(self.alive - answered):
            self._drop(index, "no reply")
        if stage in ("advertise", "share"):
            self._prune()
        t = self.params.t
        if len(self.alive) < t:
            raise Aborted(
                f"secure aggregation aborted after stage {stage!r}: {len(self.alive)} of "
                f"{self.params.n} clients left, threshold t = {t}"
            )
        self.survivors[stage] = frozenset(self.alive)
        self.replied = set()
        self.stage = self.stages[self.stages.index(stage) + 1]

    def _prune(self) -> None:
        """Drop clients with fewer than t live neighbours (they could not be unmasked)."""
        changed = True
        while changed:
            changed = False
            for index in sorted(self.alive):
                live = len(self.neighbours[index] & self.alive)
                if live < self.params.t:
                    self._drop(index, f"only {live} live neighbours, threshold {self.params.t}")
                    changed = True

    # -- stage 0: advertise keys -----------------------------------------------------------
    def _receive_advertise(self, index: int, reply: KeysReply) -> None:
        if index in self.known.slot:
            raise ProtocolViolation("keys advertised unasked")
        node = self.nodes[index - 1]
        batch = advertised(reply, self.identities, node)
        if not batch:
            raise ProtocolViolation("no key pair advertised")
        self._use(index, batch[0], reply.cert)
        self.book.add(node, batch[1:], reply.cert)

    # -- stage 1: share keys ---------------------------------------------------------------
    def _share_request(self, index: int) -> ShareRequest:
        peers = tuple(sorted(self.neighbours[index] & self.alive))
        known, signed = self.known, self.identities is not None
        return ShareRequest(
            **self._setup_fields,
            slot=known.slot[index],
            neighbours=peers,
            c_pks=tuple(known.c_pk[j] for j in peers),
            s_pks=tuple(known.s_pk[j] for j in peers),
            certs=tuple(known.cert[j] for j in peers) if signed else (),
            sigs=tuple(known.key_sig[j] for j in peers) if signed else (),
        )

    def _receive_share(self, index: int, reply: ShareReply) -> None:
        expected = set(self.neighbours[index] & self.survivors["advertise"])
        if set(reply.recipients) != expected or len(reply.recipients) != len(expected):
            raise ProtocolViolation("share recipients are not the client's live neighbours")
        if len(reply.ciphertexts) != len(reply.recipients):
            raise ProtocolViolation("one ciphertext per recipient expected")
        if len(reply.commitment) != 32:
            raise ProtocolViolation("seed commitment must be 32 bytes")
        self.known.commitments[index] = reply.commitment
        for recipient, sealed in zip(reply.recipients, reply.ciphertexts, strict=True):
            self.known.inbox.setdefault(recipient, []).append((index, sealed))

    # -- stage 2: masked input -------------------------------------------------------------
    def _mask_request(self, index: int) -> MaskRequest:
        mail = [(s, c) for s, c in self.known.inbox.get(index, []) if s in self.alive]
        return MaskRequest(self.session, tuple(s for s, _ in mail), tuple(c for _, c in mail))

    def _receive_masked(self, index: int, reply: MaskReply) -> None:
        vector = reply.masked
        size = self.vector_size + TAIL
        if vector.dtype != np.uint32 or vector.shape != (size,):
            raise ProtocolViolation(
                f"masked vector is {vector.dtype}{list(vector.shape)}, expected uint32[{size}]"
            )
        self.known.rejected_shares[index] = reply.rejected
        if self.backend is None:
            np.add(self.total, vector, out=self.total)
        else:
            self.total += self.backend.asarray(vector)

    # -- consistency check (with identities) -----------------------------------------------
    def _check_request(self, index: int) -> CheckRequest:
        return CheckRequest(self.session, tuple(sorted(self.survivors["masked"])))

    def _receive_check(self, index: int, reply: CheckReply) -> None:
        assert self.identities is not None
        data = survivors_message(self.session, self.setup.round, self.survivors["masked"])
        try:
            peer = self.identities.authority.verify(self.known.cert[index])
            peer.verify(reply.signature, data, "survivor set")
        except InvalidIdentity as exc:
            raise ProtocolViolation(str(exc)) from None
        self.known.signatures[index] = reply.signature

    # -- stage 3: unmasking ----------------------------------------------------------------
    def _unmask_request(self, index: int) -> UnmaskRequest:
        shared = self.neighbours[index] & self.survivors["share"]
        survivors = shared & self.survivors["masked"]
        dropped = shared - survivors
        low = self.book.count(self.nodes[index - 1]) < 2
        more = self.keys_ahead if low else 0
        signers = sorted(self.neighbours[index] & self.survivors.get("check", frozenset()))
        return UnmaskRequest(
            self.session,
            tuple(sorted(survivors)),
            tuple(sorted(dropped)),
            more,
            tuple(signers),
            tuple(self.known.signatures[j] for j in signers),
        )

    def _receive_unmask(self, index: int, reply: UnmaskReply) -> None:
        request = self._unmask_request(index)
        allowed = set(request.survivors) | set(request.dropped)
        if not set(reply.owners) <= allowed or len(set(reply.owners)) != len(reply.owners):
            raise ProtocolViolation("shares offered for clients that were not asked about")
        if len(reply.shares) != 4 * shamir.CHUNKS * len(reply.owners):
            raise ProtocolViolation("share payload has the wrong length")
        rows = np.frombuffer(reply.shares, "<u4").reshape(-1, shamir.CHUNKS)
        if (rows >= shamir.PRIME).any():
            raise ProtocolViolation("share values outside the field")
        node = self.nodes[index - 1]
        batch = advertised(reply, self.identities, node, self.known.cert.get(index, b""))
        if len(batch) > request.more_keys:
            raise ProtocolViolation("more key pairs advertised than asked for")
        self.book.add(node, batch, self.known.cert.get(index, b""))
        for owner, row in zip(reply.owners, rows, strict=True):
            self.known.shares.setdefault(owner, []).append((index, row.tobytes()))

    # -- the sum ---------------------------------------------------------------------------
    def checked_mean(
        self, total: np.ndarray, max_examples: Sequence[float]
    ) -> tuple[np.ndarray, float, float]:
        """Decode the unmasked sum, or ``Aborted`` if it is not one honest encodings could give.

        Every client of U3 clipped its update to +-clip and its loss to [0, clip], and its
        weight is 1..w_max units, where w_max is what ``max_examples`` (its declared count, one
        per client of U3) quantises to. So the weight sum W lies in ``len(U3)..sum(w_max)``,
        and every coordinate of the summed update and the summed loss within ``clip * W`` (plus
        half a unit of rounding per client). A sum outside those bounds was tampered with (a
        client added to its masked words): it is refused, never committed.
        """
        encoding, summed = self.encoding, len(self.survivors["masked"])
        signed = np.asarray(total, dtype=np.uint32).view(np.int32)
        units = int(signed[-TAIL])
        most = sum(encoding.weight_units(max(1.0, float(m))) for m in max_examples)
        if not summed <= units <= most:
            raise Aborted(
                f"secure aggregation aborted: the decoded weight ({units} units) is outside "
                f"what the {summed} summed clients declared ({summed}..{most})"
            )
        bound = encoding.clip * units + summed / 2
        loss = int(signed[-TAIL + 1])
        if not 0 <= loss <= bound:
            raise Aborted("secure aggregation aborted: the decoded loss is outside [0, clip]")
        peak = int(np.abs(signed[:-TAIL].astype(np.int64)).max(initial=0))
        if peak > bound:
            raise Aborted(
                f"secure aggregation aborted: the decoded mean reaches {peak / units:.4g}, "
                f"beyond the clip of {encoding.clip:g} every client applies"
            )
        return encoding.decode_sum(total)

    def result(self) -> np.ndarray:
        """The exact sum (uint32) of the encoded inputs of U3; ``Aborted`` if impossible."""
        if self.stage != "done":
            raise RuntimeError(f"result() called at stage {self.stage!r}")
        masked = self.survivors["masked"]
        dropped = self.survivors["share"] - masked
        seeds, secret_keys = unmask.reconstruct(self, masked, dropped)
        correction = unmask.masks_to_remove(self, seeds, secret_keys)
        if self.backend is None:
            return np.subtract(self.total, correction, out=self.total)
        total = self.total - self.backend.asarray(correction)
        return np.asarray(self.backend.to_numpy(total), dtype=np.uint32)
