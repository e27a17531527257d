"""Run a check in a forked child, so that what it imports and allocates stays out of this
process: ``fedcore-device`` checks a device's data file (numpy, the whole file) before it
joins, then waits for a run without numpy or the file (an idle device stays small; the first
message loads them for good)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

MAX_MESSAGE_BYTES = 1 << 16  # the child's error message (one line)


def check_apart(check: Callable[[], None], errors: tuple[type[Exception], ...]) -> None:
    """Run ``check`` in a child and raise here, as ``errors[i](message)``, the exception of
    one of the ``errors`` types it raised there. Run it in this process instead where forking
    is unavailable or unsafe (other threads running) or when the child ends otherwise (it
    crashed or was killed: here the real error shows)."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        check()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's (atexit, buffers) runs on its way out
        code = 0
        try:
            os.close(read)
            try:
                check()
            except errors as exc:
                kind = next(i for i, error in enumerate(errors) if isinstance(exc, error))
                os.write(write, f"{kind}:{exc}".encode()[:MAX_MESSAGE_BYTES])
                code = 1
        except BaseException:  # noqa: BLE001 - reported by the parent re-running the check
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read(MAX_MESSAGE_BYTES + 1).decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return
    if code == 1 and ":" in said:
        kind, message = said.split(":", 1)
        if kind.isdigit() and int(kind) < len(errors):
            raise errors[int(kind)](message)
    check()  # the child failed otherwise: this process shows how


__all__ = ["check_apart"]
