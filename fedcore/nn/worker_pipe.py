"""Bytes between a shard worker and its parent (`fedcore.nn.shard_workers`): whole messages
over a pipe, and the worker's exception as bytes."""

from __future__ import annotations

import os
import pickle

__all__ = ["pickled", "read_exactly", "unpickled", "write_all"]


def read_exactly(fd: int, n: int) -> bytes | None:
    """Exactly n bytes from fd, or None at EOF."""
    chunks, got = [], 0
    while got < n:
        try:
            b = os.read(fd, n - got)
        except InterruptedError:
            continue
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to fd (a pipe takes a long write in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pickled(exc: BaseException) -> bytes:
    """`exc` as bytes for the parent; its type and text when it does not pickle."""
    try:
        return pickle.dumps(exc)
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


def unpickled(payload: bytes) -> BaseException:
    """The worker's exception back (a RuntimeError when it cannot be read)."""
    try:
        exc = pickle.loads(payload)
    except Exception:
        return RuntimeError("a shard worker failed (its error could not be read back)")
    return exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))
