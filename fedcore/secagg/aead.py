"""Authenticated encryption (AES-256-GCM) of the shares that travel through the server.

Client u encrypts the shares it makes for neighbour v under the key both derive from their
``c`` key pairs (see ``keys.agree``). The associated data binds the ciphertext to the round's
session id, the sender and the recipient, so a ciphertext replayed from another round, or
forwarded to the wrong client, or altered by one bit, fails to open. Nonces are random
(96 bits): a key serves one message per direction and round, far below GCM's limits.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedcore.secagg.errors import DecryptionFailed

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


def associated_data(session: bytes, sender: int, recipient: int) -> bytes:
    """What a share ciphertext is bound to: the round, and who sent it to whom."""
    return b"fedcore/secagg/v1/share" + session + sender.to_bytes(4, "big") + recipient.to_bytes(
        4, "big"
    )


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext``; returns nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, sealed: bytes, ad: bytes) -> bytes:
    """Inverse of ``seal``; ``DecryptionFailed`` if anything was altered or misdirected."""
    if len(sealed) < OVERHEAD:
        raise DecryptionFailed(f"ciphertext of {len(sealed)} bytes is too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise DecryptionFailed("share ciphertext failed authentication") from None
