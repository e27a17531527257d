"""The threaded dependency engine: pushed ops run on a small worker pool (MXNet's threaded engine).

`push` registers an op on its vars with the same `DependencyTracker` the synchronous engine
uses and returns at once; an op becomes ready when every earlier write of what it reads, and
every earlier read or write of what it writes, has finished, and a worker then runs it. Reads of
one var run together; numpy releases the GIL inside its kernels, so independent matmuls (a
layer's weight and input gradients) overlap on two cores.

Results are bitwise those of `NaiveEngine`: each op is the same function and every var sees its
writes in push order. An exception inside an op is kept (with a note naming the op), every op
that later reads or writes a var the failed op wrote is skipped rather than run on garbage, and
the exception is raised to the caller at the next `wait_for_var` / `wait_all` (MXNet's
exception propagation). Workers hold only the shared `_State`, never the engine, so an engine
that is dropped stops its workers.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence

from .base import Engine, _note_op
from .deps import DependencyTracker, OpRecord, normalize
from .errors import EngineError
from .pool import MemoryPool
from .var import Var

__all__ = ["WORKERS_ENV_VAR", "ThreadedEngine"]

WORKERS_ENV_VAR = "FEDCORE_ENGINE_WORKERS"


class _State:
    """Everything the workers share: the lock, the ready queue, pending count and errors."""

    def __init__(self, deps: DependencyTracker):
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # an op became ready, or stop
        self.done = threading.Condition(self.lock)  # an op completed
        self.ready: deque[OpRecord] = deque()
        self.deps = deps
        self.pending = 0
        self.stop = False
        self.errors: list[tuple[str, BaseException]] = []
        self.skipped = 0
        self.failed_vars: list[Var] = []
        self.local = threading.local()  # `.running`: the op a worker thread is running
        self.threads: list[threading.Thread] = []


def _worker(st: _State) -> None:
    while True:
        with st.lock:
            while not st.ready:
                if st.stop:
                    return
                st.work.wait()
            op = st.ready.popleft()
        _run(st, op)
        del op  # drop the op's closure (and the buffers it holds) before sleeping


def _run(st: _State, op: OpRecord) -> None:
    failed = None
    for v in op.reads + op.writes:  # an input or in-place target left broken by a failed op
        if v._dep_error is not None:
            failed = v._dep_error
            break
    err = None
    if failed is None:
        st.local.running = op.name
        try:
            op.fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised to the caller at the next wait
            err = exc
        finally:
            st.local.running = None
    with st.lock:
        if err is not None:
            _note_op(err, op.name)
            failed = (op.name, err)
            st.errors.append(failed)
        elif failed is not None:
            st.skipped += 1
            if not any(e is failed[1] for _, e in st.errors):  # reported already: again
                st.errors.append(failed)
        if failed is not None:
            for v in op.writes:
                if v._dep_error is None:
                    v._dep_error = failed
                    st.failed_vars.append(v)
        ready = st.deps.complete(op)
        if ready:
            st.ready.extend(ready)
            st.work.notify(len(ready))
        st.pending -= 1
        st.done.notify_all()


def _shutdown(st: _State) -> None:
    with st.lock:
        st.stop = True
        st.work.notify_all()
    me = threading.current_thread()
    for t in st.threads:
        if t is not me:
            t.join()


def default_workers() -> int:
    """FEDCORE_ENGINE_WORKERS, else min(4, cpu count), at least 2 (so reads can overlap)."""
    raw = os.environ.get(WORKERS_ENV_VAR, "").strip()
    if raw:
        n = int(raw)
        if n < 1:
            raise ValueError(f"{WORKERS_ENV_VAR} must be >= 1, got {raw!r}")
        return n
    return max(2, min(4, os.cpu_count() or 2))


class ThreadedEngine(Engine):
    """Runs pushed ops asynchronously on `num_workers` threads in dependency order."""

    name = "threaded"
    asynchronous = True

    def __init__(self, pool: MemoryPool | None = None, num_workers: int | None = None):
        super().__init__(pool)
        self.num_workers = default_workers() if num_workers is None else int(num_workers)
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._st = _State(self.deps)
        self._finalizer = weakref.finalize(self, _shutdown, self._st)

    def _start(self) -> None:
        st = self._st
        for i in range(self.num_workers):
            t = threading.Thread(target=_worker, args=(st,), name=f"fedcore-engine-{i}",
                                 daemon=True)
            st.threads.append(t)
            t.start()

    def push(
        self,
        fn: Callable[[], None],
        reads: Sequence[Var],
        writes: Sequence[Var],
        name: str = "op",
    ) -> None:
        """Queue `fn`; it runs on a worker once its reads and writes are free."""
        rd, wr = normalize(reads, writes, name)
        op = OpRecord(fn, rd, wr, name)
        st = self._st
        with st.lock:
            if st.stop:
                raise EngineError(f"op '{name}' pushed to an engine that was shut down")
            if not st.threads:
                self._start()
            st.pending += 1
            self.num_ops += 1
            if st.deps.add(op):
                st.ready.append(op)
                st.work.notify()

    def _check_outside_op(self, what: str) -> None:
        running = getattr(self._st.local, "running", None)
        if running is not None:
            raise EngineError(f"{what} called from inside running op '{running}': it would "
                              f"wait for itself (deadlock)")

    def wait_for_var(self, var: Var) -> None:
        """Block until every pushed write to `var` has completed; raise a pending op error."""
        self._check_outside_op(f"wait_for_var('{var.root.label}')")
        root = var._base or var
        st = self._st
        with st.lock:
            while root._dep_pending_writes:
                st.done.wait()
            if root._dep_error is not None:  # this very value is broken: say why
                self._raise_pending(root._dep_error[1])
            self._raise_pending()

    def wait_all(self) -> None:
        """Block until every pushed op has completed; raise a pending op error."""
        self._check_outside_op("wait_all()")
        st = self._st
        with st.lock:
            while st.pending:
                st.done.wait()
            self._raise_pending()

    def _raise_pending(self, exc: BaseException | None = None) -> None:
        """Raise `exc` or the first recorded op error (lock held), once it has been reported.

        Vars that still hold a value (stale, not garbage: the ops that would have written
        them were skipped) are usable again afterwards; a var whose producing op failed has
        no value and keeps its error, so later ops reading it are skipped and re-raise it.
        """
        st = self._st
        if exc is None:
            if not st.errors:
                return
            exc = st.errors[0][1]
        more = sum(1 for _, e in st.errors if e is not exc)
        skipped = st.skipped
        keep = []
        for v in st.failed_vars:
            if v.data is None:
                keep.append(v)
            else:
                v._dep_error = None
        st.failed_vars[:] = keep
        st.errors.clear()
        st.skipped = 0
        notes = [n for n in getattr(exc, "__notes__", ()) if not n.startswith("engine: ")]
        if more or skipped:
            notes.append(f"engine: {more} other op(s) failed and {skipped} dependent op(s) "
                         f"were skipped")
        exc.__notes__ = notes
        raise exc

    def shutdown(self) -> None:
        """Finish the queued ops and stop the workers; later pushes raise EngineError."""
        self._finalizer()

    def __enter__(self) -> ThreadedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (f"ThreadedEngine(workers={self.num_workers}, ops={self.num_ops}, "
                f"pending={self._st.pending}, pool={self.pool!r})")
