"""Key agreement for secure aggregation: X25519 key pairs and HKDF-SHA256 derived keys.

Every client makes two fresh X25519 key pairs per round (Bonawitz et al. notation): ``c`` keys
agree the AEAD keys that protect the Shamir shares travelling through the server, ``s`` keys
agree the pairwise mask seeds. A raw X25519 output is never used directly: it goes through
HKDF-SHA256 with the round's session id as salt and a purpose label as info, so keys of
different rounds and purposes are independent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedcore.secagg.errors import InvalidKey

KEY_BYTES = 32
PURPOSE_SHARES = b"fedcore/secagg/v1/share-encryption"
PURPOSE_PAIRWISE = b"fedcore/secagg/v1/pairwise-mask"
PURPOSE_SELF = b"fedcore/secagg/v1/self-mask"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair kept as raw 32-byte strings (cheap to store and to ship)."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's CSPRNG."""
        sk = X25519PrivateKey.generate()
        return cls(sk.private_bytes_raw(), sk.public_key().public_bytes_raw())


def public_of(private: bytes) -> bytes:
    """The public key of a raw X25519 private key (used to verify a reconstructed key)."""
    _check(private, "private key")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def derive_key(secret: bytes, session: bytes, purpose: bytes, context: bytes = b"") -> bytes:
    """HKDF-SHA256(secret, salt=session, info=purpose || context) -> 32 bytes."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=session, info=purpose + context)
    return hkdf.derive(secret)


def load_private(private: bytes) -> X25519PrivateKey:
    """Parse a raw private key once (``agree`` then skips the parsing)."""
    _check(private, "private key")
    return X25519PrivateKey.from_private_bytes(private)


def agree(
    private: bytes | X25519PrivateKey, peer_public: bytes, session: bytes, purpose: bytes
) -> bytes:
    """The 32-byte key that ``private`` and the owner of ``peer_public`` both derive.

    X25519 is symmetric, so ``agree(a.private, b.public) == agree(b.private, a.public)``.
    A low-order (all-zero shared secret) peer key raises ``InvalidKey``.
    """
    sk = load_private(private) if isinstance(private, bytes | bytearray) else private
    _check(peer_public, "public key")
    try:
        shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # cryptography rejects low-order points
        raise InvalidKey(f"key agreement failed: {exc}") from exc
    return derive_key(shared, session, purpose)


_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))  # any fixed scalar will do


def check_public(public: bytes) -> None:
    """``InvalidKey`` unless ``public`` is a 32-byte X25519 key of large order.

    A low-order point (all-zero and its few siblings) makes every key agreement with it yield
    the all-zero secret, which ``agree`` refuses: one such key advertised would abort every
    neighbour's round. Clamped scalars are multiples of the cofactor 8, so agreeing with any
    fixed one reveals it.
    """
    _check(public, "public key")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise InvalidKey(f"low-order public key: {exc}") from None


def commitment(session: bytes, index: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, so the server can check its reconstruction."""
    data = b"fedcore/secagg/v1/seed" + session + index.to_bytes(4, "big") + seed
    return hashlib.sha256(data).digest()


def _check(key: bytes, what: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise InvalidKey(f"{what} must be {KEY_BYTES} bytes")
