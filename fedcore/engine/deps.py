"""Per-var dependency tracking shared by every engine (MXNet's ThreadedVar, in Python).

Each root var keeps a count of running reads, a flag for a running write, and a FIFO of ops
waiting for it. An op may read a var once every earlier write to it has finished, and may write
it once every earlier read and write has finished. `DependencyTracker.add` registers an op and
says whether it can run now; `complete` releases its vars, bumps the versions of what it wrote
and returns the ops that became runnable. The synchronous engine uses it to reject pushes that
would deadlock; a threaded engine calls the same two methods under one lock and hands ready ops
to its workers. These methods are not thread-safe on their own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from .errors import EngineError
from .var import Var

__all__ = ["DependencyTracker", "OpRecord", "expected_version", "normalize"]


class OpRecord:
    """One pushed operation: its function, its (root, deduplicated) read and write sets."""

    __slots__ = ("fn", "reads", "writes", "name", "wait")

    def __init__(
        self, fn: Callable[[], None], reads: tuple[Var, ...], writes: tuple[Var, ...], name: str
    ):
        self.fn = fn
        self.reads = reads
        self.writes = writes
        self.name = name
        self.wait = 0

    def __repr__(self) -> str:
        return f"OpRecord({self.name!r}, reads={len(self.reads)}, writes={len(self.writes)})"


def normalize(
    reads: Sequence[Var], writes: Sequence[Var], name: str
) -> tuple[tuple[Var, ...], tuple[Var, ...]]:
    """Map vars to their roots, drop duplicates, and reject a root that is both read and written.

    A write already implies exclusive access, so listing the var in both sets is a caller bug
    (MXNet rejects it the same way); views of one buffer count as the same var.
    """
    if len(writes) == 1:  # the common shapes first: one write, a few reads
        v = writes[0]
        w: tuple[Var, ...] = (v._base or v,)
    else:
        w = tuple(dict.fromkeys([v._base or v for v in writes]))
    if len(reads) == 1:
        v = reads[0]
        r: tuple[Var, ...] = (v._base or v,)
    else:
        r = tuple(dict.fromkeys([v._base or v for v in reads]))
    if w and r:
        for v in r:
            if v in w:
                raise EngineError(
                    f"op '{name}' lists var '{v.label}' (or a view of it) in both its read and "
                    f"write sets; list it in the write set only"
                )
    return r, w


def expected_version(var: Var) -> int:
    """The version `var` will have once every write pushed so far has completed."""
    return (var._base or var)._dep_expected


class DependencyTracker:
    """FIFO read/write dependency bookkeeping over root vars."""

    def blocker(self, op: OpRecord) -> Var | None:
        """The first var on which `op` would have to wait, or None if it could run now."""
        for v in op.reads:
            if v._dep_writing or v._dep_queue:
                return v
        for v in op.writes:
            if v._dep_writing or v._dep_reads or v._dep_queue:
                return v
        return None

    def add(self, op: OpRecord) -> bool:
        """Register `op` on its vars; True when it holds all of them and may run now."""
        wait = 0
        for v in op.reads:
            if v._dep_writing or v._dep_queue:
                _enqueue(v, op, False)
                wait += 1
            else:
                v._dep_reads += 1
        for v in op.writes:
            v._dep_pending_writes += 1
            v._dep_expected += 1
            if v._dep_writing or v._dep_reads or v._dep_queue:
                _enqueue(v, op, True)
                wait += 1
            else:
                v._dep_writing = True
        op.wait = wait
        return wait == 0

    def complete(self, op: OpRecord) -> list[OpRecord]:
        """Release `op`'s vars, bump what it wrote, and return the ops that may now run."""
        ready: list[OpRecord] = []
        for v in op.reads:
            v._dep_reads -= 1
            if v._dep_queue and not v._dep_reads:
                _grant(v, ready)
        for v in op.writes:
            v._dep_writing = False
            v._dep_pending_writes -= 1
            v._version += 1
            v.last_writer = op.name
            if v._dep_queue:
                _grant(v, ready)
        return ready


def _enqueue(v: Var, op: OpRecord, is_write: bool) -> None:
    if v._dep_queue is None:
        v._dep_queue = deque()
    v._dep_queue.append((op, is_write))


def _grant(v: Var, ready: list[OpRecord]) -> None:
    """Hand `v` to the waiting ops at the head of its queue that may now proceed."""
    q = v._dep_queue
    while q:
        op, is_write = q[0]
        if is_write:
            if v._dep_reads or v._dep_writing:
                break
            q.popleft()
            v._dep_writing = True
            _granted(op, ready)
            break
        if v._dep_writing:
            break
        q.popleft()
        v._dep_reads += 1
        _granted(op, ready)
    if not q:
        v._dep_queue = None


def _granted(op: OpRecord, ready: list[OpRecord]) -> None:
    op.wait -= 1
    if op.wait == 0:
        ready.append(op)


def check_not_running(var: Var, what: str) -> None:
    """Raise if `var` has a pending write (used by synchronous waits inside running ops)."""
    root = var._base or var
    if root._dep_writing or root._dep_queue:
        raise EngineError(f"{what}: var '{root.label}' has a write still in flight")
