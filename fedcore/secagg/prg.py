"""Masks: a 256-bit key expanded by AES-256-CTR straight into a vector of uint32 words.

Every mask key is used for exactly one vector (keys are fresh per round and per pair), so the
counter starts at zero. The keystream bytes are read as little-endian uint32 words, which are
uniform on Z_2^32; adding one to a fixed-point vector (mod 2^32, numpy's uint32 wrap-around)
hides it perfectly as long as the key stays secret. AES runs in OpenSSL (AES-NI where the CPU
has it): about 5 GB/s on one core of a laptop-class x86, so a 1M-parameter mask costs ~1 ms.
"""

from __future__ import annotations

import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

WORD = np.dtype("<u4")
_BLOCK = 16
_zeros = bytearray()
_zeros_lock = threading.Lock()


def _zero_bytes(count: int) -> memoryview:
    """A shared read-only run of ``count`` zero bytes (the plaintext the keystream encrypts)."""
    global _zeros
    if len(_zeros) < count:
        with _zeros_lock:
            if len(_zeros) < count:
                _zeros = bytearray(max(count, 2 * len(_zeros)))
    return memoryview(_zeros)[:count]


def expand_mask(key: bytes, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``size`` uint32 words of AES-256-CTR keystream under ``key`` (32 bytes).

    ``out`` (uint32, at least ``size + 4`` words, contiguous) is reused when given, which saves
    an allocation per mask on the server's hot path.
    """
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    if out is None:
        out = np.empty(size + _BLOCK // WORD.itemsize, dtype=WORD)
    elif out.dtype != WORD or out.size < size + 4 or not out.flags.c_contiguous:
        raise ValueError(f"scratch buffer must be contiguous uint32 with >= {size + 4} words")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(_BLOCK))).encryptor()
    nbytes = size * WORD.itemsize
    written = encryptor.update_into(_zero_bytes(nbytes), out.view(np.uint8))
    if written != nbytes:  # pragma: no cover - CTR is a stream mode
        raise RuntimeError(f"keystream short: {written} of {nbytes} bytes")
    return out[:size]


def apply_mask(acc: np.ndarray, key: bytes, sign: int, scratch: np.ndarray | None = None) -> None:
    """``acc += sign * mask(key)`` in place, mod 2^32 (``sign`` is +1 or -1)."""
    mask = expand_mask(key, acc.size, scratch)
    if sign > 0:
        np.add(acc, mask, out=acc)
    else:
        np.subtract(acc, mask, out=acc)
