"""The four stages' messages, as plain dataclasses and as Flower records.

Stage (message type)                   server -> client        client -> server
advertise keys  (query.secagg_advertise) ``KeysRequest``         ``KeysReply``
share keys      (query.secagg_share)     ``ShareRequest``        ``ShareReply``
                                         (with the ``Setup``)
masked input    (train.secagg_masked)    ``MaskRequest`` + the   ``MaskReply`` + the masked
                                         global vector and the   vector (uint32 ArrayRecord)
                                         train instructions
consistency     (query.secagg_check)     ``CheckRequest``        ``CheckReply``
check (with identities only)
unmasking       (query.secagg_unmask)    ``UnmaskRequest``       ``UnmaskReply``

Keys are advertised ahead: a client hands in key pairs for several rounds at once, by key
slot, and tops them up in its unmask reply when the server asks; each slot serves one round
only. So the advertise stage runs only for clients the server holds no unused slot of (all of
them in a run's first round), and a steady round has three stages, like a plain round plus two.

Every message names its stage and the round's random session id; a message for another stage
or session is a ``ProtocolViolation``. Clients are named by their 1-based index in
``Setup.participants`` (which is also their Shamir share point). Each message is one
``ConfigRecord`` holding its stage name and its fields packed by ``codec`` (ints, floats,
bytes and lists of those); Flower is imported lazily.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedcore.secagg import codec
from fedcore.secagg.errors import ProtocolViolation

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from fedcore.records import Kit

RECORD = "secagg"  # ConfigRecord name inside a message's RecordDict
MASKED = "secagg_masked"  # ArrayRecord name of the masked vector
TYPES = {
    "advertise": "query.secagg_advertise",
    "share": "query.secagg_share",
    "masked": "train.secagg_masked",
    "check": "query.secagg_check",
    "unmask": "query.secagg_unmask",
}


@dataclass(frozen=True)
class _Message:
    STAGE: ClassVar[str] = ""
    session: bytes

    def to_config(self) -> dict[str, Any]:
        """ConfigRecord-ready values: the stage name and the packed message."""
        return {"stage": self.STAGE, "body": codec.pack(self)}

    @classmethod
    def from_config(cls, config: typing.Mapping[str, Any], **extra: Any) -> typing.Self:
        """Parse and type-check; anything unexpected raises ``ProtocolViolation``."""
        stage = config.get("stage")
        if stage != cls.STAGE:
            raise ProtocolViolation(f"expected a {cls.STAGE!r} message, got stage {stage!r}")
        body = config.get("body")
        if not isinstance(body, bytes):
            raise ProtocolViolation(f"{cls.STAGE} message has no body")
        return codec.unpack(cls, body, **extra)


@dataclass(frozen=True)
class KeysRequest(_Message):
    """Stage 0 request: advertise ``count`` fresh key pairs, for this round and the next ones."""

    STAGE: ClassVar[str] = "advertise"
    count: int


@dataclass(frozen=True)
class KeysReply(_Message):
    """Stage 0 reply: fresh X25519 public keys (c for shares, s for masks) by key slot; with
    identities, the client's identity certificate (DER) and its signature of each pair."""

    STAGE: ClassVar[str] = "advertise"
    slots: tuple[int, ...]
    c_pks: tuple[bytes, ...]
    s_pks: tuple[bytes, ...]
    cert: bytes = b""
    sigs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Setup(_Message):
    """The round's public parameters: who takes part, the graph, threshold and encoding."""

    STAGE: ClassVar[str] = "setup"
    round: int
    participants: tuple[int, ...]  # node ids; a client's index is its position + 1
    k: int
    t: int
    graph_seed: bytes
    clip: float
    frac_bits: int
    max_weight: float
    vector_size: int  # d: the plain update's length (the masked vector has d + 2 words)


@dataclass(frozen=True)
class ShareRequest(Setup):
    """Stage 1 request: the setup, which of the client's advertised key slots to use, and
    the public keys of its neighbours (for their slots); with identities, each neighbour's
    certificate and signature of its keys."""

    STAGE: ClassVar[str] = "share"
    slot: int
    neighbours: tuple[int, ...]
    c_pks: tuple[bytes, ...]
    s_pks: tuple[bytes, ...]
    certs: tuple[bytes, ...] = ()
    sigs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ShareReply(_Message):
    """Stage 1 reply: one AEAD ciphertext of shares per neighbour, and a seed commitment."""

    STAGE: ClassVar[str] = "share"
    recipients: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    commitment: bytes


@dataclass(frozen=True)
class MaskRequest(_Message):
    """Stage 2 request: the ciphertexts addressed to the client, by sender."""

    STAGE: ClassVar[str] = "masked"
    senders: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class MaskReply(_Message):
    """Stage 2 reply: the masked vector (uint32, d + 2 words) and senders whose shares failed."""

    STAGE: ClassVar[str] = "masked"
    rejected: tuple[int, ...]
    masked: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.uint32), compare=False, metadata={"wire": False}
    )


@dataclass(frozen=True)
class CheckRequest(_Message):
    """Consistency check request (with identities): the round's survivor set U3, the clients
    whose masked inputs are in the sum."""

    STAGE: ClassVar[str] = "check"
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class CheckReply(_Message):
    """Consistency check reply: the client's signature of (session, round, U3)."""

    STAGE: ClassVar[str] = "check"
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Stage 3 request: which neighbours survived (reveal b shares), which dropped (s shares),
    and how many fresh key pairs to advertise for later rounds (0: none needed); with
    identities, the neighbours that signed U3 and their signatures."""

    STAGE: ClassVar[str] = "unmask"
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    more_keys: int = 0
    signers: tuple[int, ...] = ()
    signatures: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class UnmaskReply(_Message):
    """Stage 3 reply: for each owner, the share (16 field elements, '<u4' bytes) asked for;
    and the fresh public keys asked for, by slot."""

    STAGE: ClassVar[str] = "unmask"
    owners: tuple[int, ...]
    shares: bytes
    slots: tuple[int, ...] = ()
    c_pks: tuple[bytes, ...] = ()
    s_pks: tuple[bytes, ...] = ()
    sigs: tuple[bytes, ...] = ()


# --- Flower records ---------------------------------------------------------------------------


def to_content(message: _Message, kit: Kit | None = None, **extra: Any) -> RecordDict:
    """A RecordDict (of ``kit``, default Flower's) holding ``message`` (and the masked vector
    of a ``MaskReply``).

    ``extra`` records (e.g. the global vector) are added under their keyword names.
    """
    from fedcore.records import flower_kit
    from fedcore.wire import vector_record

    kit = kit or flower_kit()
    content = kit.RecordDict({RECORD: kit.ConfigRecord(message.to_config())})
    if isinstance(message, MaskReply):
        content[MASKED] = vector_record(message.masked, kit)
    for name, record in extra.items():
        content[name] = record
    return content


def from_content(kind: type[_Message], content: RecordDict) -> Any:
    """Parse a stage message of type ``kind`` from a RecordDict (Flower's or lean;
    ``ProtocolViolation`` if bad)."""
    from fedcore.records import kit_of
    from fedcore.wire import read_vector

    kit = kit_of(content)
    config = content.get(RECORD)  # not content.config_records: that view copies every record
    if not isinstance(config, kit.ConfigRecord):
        raise ProtocolViolation(f"message has no {RECORD!r} record")
    if kind is not MaskReply:
        return kind.from_config(config)
    record = content.get(MASKED)
    if not isinstance(record, kit.ArrayRecord):
        raise ProtocolViolation("masked reply carries no vector")
    try:
        vector = read_vector(record)
    except ValueError as exc:
        raise ProtocolViolation(f"masked vector unreadable: {exc}") from exc
    return kind.from_config(config, masked=vector)
