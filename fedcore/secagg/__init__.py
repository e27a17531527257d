"""Secure aggregation primitives (SecAgg+, Bell et al. CCS 2020), light enough for a device.

- ``keys``: X25519 key pairs, HKDF-SHA256 key derivation, seed commitments;
- ``prg``: masks, AES-256-CTR keystream read as uint32 words;
- ``shamir``: t-of-k sharing of 32-byte secrets over GF(65537), vectorised;
- ``aead``: AES-256-GCM for shares relayed by the server;
- ``fixedpoint``: weighted float updates <-> Z_2^32 (range and error bound documented there);
- ``graph``: the seeded Harary neighbour graph; ``params``: n, k, t and their derivation;
- ``messages``: the four stages' messages and their Flower records (packed by ``codec``).

The client side lives in ``client_runtime.secagg``, the server side in ``aggregator.secagg``.
Depends on numpy and cryptography only (Flower lazily, in ``messages``).
"""

from fedcore.secagg.errors import (
    Aborted,
    DecryptionFailed,
    InvalidKey,
    ProtocolViolation,
    SecAggError,
)
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.secagg.params import SecAggParams, derive_params

__all__ = [
    "Aborted",
    "DecryptionFailed",
    "FixedPoint",
    "InvalidKey",
    "ProtocolViolation",
    "SecAggError",
    "SecAggParams",
    "derive_params",
]
