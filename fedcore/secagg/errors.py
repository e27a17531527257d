"""Errors of the secure-aggregation protocol, shared by the client and the server side."""

from __future__ import annotations


class SecAggError(Exception):
    """Base class: something in secure aggregation went wrong; the message says what."""


class InvalidKey(SecAggError):
    """A public or private key is malformed (wrong length, low-order point, mismatch)."""


class DecryptionFailed(SecAggError):
    """An AEAD ciphertext did not authenticate (tampered, replayed or misrouted)."""


class ProtocolViolation(SecAggError):
    """A stage message is malformed, out of order, for another round, or unsafe to answer."""


class Aborted(SecAggError):
    """The round cannot produce a correct sum (too few survivors or shares); nothing is
    returned rather than a wrong sum."""
