"""A few Fleet calls at once: a message's objects are pulled and pushed one call each.

A train message and its reply are six to nine objects (Message, RecordDict, ArrayRecord,
Array, ArrayChunk, ConfigRecord...), each its own ``pull-object``/``push-object`` round trip;
one after another they were a large part of a device's time per message exchange (measured
with ``benchmarks.deploy``). ``unordered`` runs them on a few threads sharing the agent's
``transport.FleetClient`` (a connection per call in flight, kept alive). Under an
address-space limit (``RLIMIT_AS``: ``prlimit --as``, a device class's budget) the calls run
one after another as before: each new thread's malloc arena reserves 64 MiB of address space,
which left numpy's OpenBLAS no room to map when it loads with the first message (measured at
rpi-zero-2w's 307 MiB); likewise where a thread cannot be started.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def unordered(call: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """``(item, call(item))`` for each item, as each finishes, on up to ``workers`` threads.

    The first exception raised by a call is raised here; the other threads finish the call
    they are in and take no more items (also when the consumer stops early)."""
    pending = deque(items)
    count = len(pending)
    if workers <= 1 or count <= 1 or address_space_limited():
        for item in pending:
            yield item, call(item)
        return
    results: queue.SimpleQueue[tuple[T, R | None, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                item = pending.popleft()
            except IndexError:
                return
            try:
                results.put((item, call(item), None))
            except BaseException as exc:  # handed to the consumer, raised there
                results.put((item, None, exc))
                return

    threads = []
    for _ in range(min(workers, count)):
        thread = threading.Thread(target=work, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no room for another thread: the ones started do it all
            break
        threads.append(thread)
    if not threads:
        for item in pending:
            yield item, call(item)
        return
    try:
        for _ in range(count):
            item, value, error = results.get()
            if error is not None:
                raise error
            yield item, value  # type: ignore[misc]
    finally:
        stop.set()
        for thread in threads:
            thread.join()


class Later(Generic[R]):
    """A call under way on its own thread (see ``later``)."""

    def __init__(self, call: Callable[[], R]) -> None:
        self._value: R | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not address_space_limited():
            thread = threading.Thread(target=self._run, args=(call,), daemon=True)
            try:
                thread.start()
                self._thread = thread
            except RuntimeError:  # no room for another thread: made here and now
                pass
        if self._thread is None:
            self._run(call)

    def _run(self, call: Callable[[], R]) -> None:
        try:
            self._value = call()
        except BaseException as exc:  # handed to the caller of ``result``
            self._error = exc

    def result(self) -> R:
        """The call's value once it has ended; its exception, raised here."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def later(call: Callable[[], R]) -> Later[R]:
    """``call()`` on a thread while the caller goes on; ``.result()`` waits for it. Made at
    once, on the caller's thread, under an address-space limit (see the module docstring)."""
    return Later(call)


@functools.cache
def address_space_limited() -> bool:
    """Whether this process runs under an address-space limit (``RLIMIT_AS``)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


__all__ = ["Later", "address_space_limited", "later", "unordered"]
