"""The engine interface and the synchronous engine (MXNet's dependency engine, in numpy).

Every operation is pushed with the vars it reads and the vars it writes. An engine runs an op
once every earlier write to what it reads, and every earlier read or write of what it writes,
has finished; when the op completes the versions of its write set are bumped. `NaiveEngine`
runs each op immediately (for debugging and for devices with one core); `ThreadedEngine`
(`fedcore.engine.threaded`) reuses `DependencyTracker` and this interface to run independent
ops on a small worker pool. `fedcore.engine.engine` chooses the process-wide one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from .deps import DependencyTracker, OpRecord, normalize
from .errors import EngineError
from .pool import MemoryPool
from .var import Var

__all__ = ["Engine", "NaiveEngine"]


class Engine(ABC):
    """Schedules pushed operations by their read/write sets; owns the memory pool ops use."""

    name = "abstract"
    #: True when push() may return before the op has run (callers then wait for results)
    asynchronous = False

    def __init__(self, pool: MemoryPool | None = None):
        self.pool = pool if pool is not None else MemoryPool()
        self.deps = DependencyTracker()
        self.num_ops = 0

    @abstractmethod
    def push(
        self,
        fn: Callable[[], None],
        reads: Sequence[Var],
        writes: Sequence[Var],
        name: str = "op",
    ) -> None:
        """Schedule `fn`, which reads `reads` and writes `writes`; bump the writes when done."""

    @abstractmethod
    def wait_for_var(self, var: Var) -> None:
        """Block until every pushed write to `var` has completed."""

    @abstractmethod
    def wait_all(self) -> None:
        """Block until every pushed op has completed."""

    def delete_var(self, var: Var) -> None:
        """Drop `var`'s buffer once every op pushed so far that uses it has finished.

        Pushed as a write, so it runs after the var's pending readers and writers (MXNet's
        DeleteVariable); a buffer from the pool stops being counted right then.
        """
        root = var._base or var
        pool = self.pool

        def delete() -> None:
            arr = root.data
            root.data = None
            if arr is not None and pool.owns(arr):
                pool.free(arr)

        self.push(delete, (), (root,), f"delete_var({root.label})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ops={self.num_ops}, pool={self.pool!r})"


class NaiveEngine(Engine):
    """Runs every op synchronously at push time, checking its read/write sets.

    A push from inside a running op (a nested push) is allowed only if it does not need a var
    the outer op holds; otherwise it would deadlock under a threaded engine and is rejected.
    """

    name = "naive"

    def __init__(self, pool: MemoryPool | None = None):
        super().__init__(pool)
        self._running: list[str] = []

    def push(
        self,
        fn: Callable[[], None],
        reads: Sequence[Var],
        writes: Sequence[Var],
        name: str = "op",
    ) -> None:
        """Run `fn` now; versions of `writes` are bumped when it returns (or raises)."""
        rd, wr = normalize(reads, writes, name)
        op = OpRecord(fn, rd, wr, name)
        deps = self.deps
        if self._running:
            blocked = deps.blocker(op)
            if blocked is not None:
                raise EngineError(
                    f"op '{name}' was pushed from inside op '{self._running[-1]}' and needs var "
                    f"'{blocked.label}', which a running op holds: this would deadlock"
                )
        deps.add(op)
        self._running.append(name)
        self.num_ops += 1
        try:
            fn()
        except BaseException as exc:
            _note_op(exc, name)
            raise
        finally:
            self._running.pop()
            deps.complete(op)

    def wait_for_var(self, var: Var) -> None:
        """Nothing to wait for; waiting on a var a running op writes would deadlock, so raise."""
        if var.root._dep_writing:
            raise EngineError(
                f"wait_for_var('{var.root.label}') called while an op writing it is running"
            )

    def wait_all(self) -> None:
        """Nothing is ever pending in a synchronous engine."""
        if self._running:
            raise EngineError(f"wait_all() called from inside running op '{self._running[-1]}'")


def _note_op(exc: BaseException, name: str) -> None:
    """Name the engine op an exception came from (a PEP 678 note; the type is kept)."""
    note = f"raised inside engine op '{name}'"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
