"""The engines by name and the process-wide engine.

`Engine` and the synchronous `NaiveEngine` are `fedcore.engine.base`'s, `ThreadedEngine`
(independent ops on a small worker pool) `fedcore.engine.threaded`'s. The process-wide engine is
chosen with `set_engine` / `use_engine`, or the environment variable FEDCORE_ENGINE ("naive",
the default, or "threaded"). A thread may run its ops on an engine of its own instead
(`thread_engine`): one shard of a data-parallel step (`fedcore.nn.shards`) records and runs its
ops beside the other shards without sharing an engine's bookkeeping with them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .base import Engine, NaiveEngine
from .pool import MemoryPool
from .threaded import ThreadedEngine

__all__ = [
    "ENGINES",
    "ENV_VAR",
    "Engine",
    "NaiveEngine",
    "ThreadedEngine",
    "create_engine",
    "engine_from_env",
    "get_engine",
    "set_engine",
    "thread_engine",
    "use_engine",
]

ENV_VAR = "FEDCORE_ENGINE"

ENGINES: dict[str, type[Engine]] = {"naive": NaiveEngine, "threaded": ThreadedEngine}


def create_engine(name: str, pool: MemoryPool | None = None) -> Engine:
    """A new engine of the named kind (see ENGINES)."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; known engines: {', '.join(sorted(ENGINES))}"
        ) from None
    return cls(pool)


def engine_from_env() -> Engine:
    """The engine named by FEDCORE_ENGINE (default "naive"); ValueError naming it if unknown."""
    raw = os.environ.get(ENV_VAR, "")
    name = raw.strip().lower() or "naive"
    if name not in ENGINES:
        raise ValueError(
            f"{ENV_VAR}={raw!r} is not a known engine; set {ENV_VAR} to one of: "
            f"{', '.join(sorted(ENGINES))}"
        )
    return create_engine(name)


_engine: Engine | None = None


class _ThreadEngine(threading.local):
    engine: Engine | None = None


_local = _ThreadEngine()


def get_engine() -> Engine:
    """This thread's engine (see `thread_engine`), else the process-wide engine, created from
    FEDCORE_ENGINE on first use."""
    eng = _local.engine
    if eng is not None:
        return eng
    global _engine
    eng = _engine
    if eng is None:
        eng = _engine = engine_from_env()
    return eng


def set_engine(engine: Engine | None) -> Engine | None:
    """Install `engine` process-wide (None: recreate from FEDCORE_ENGINE on next use).

    Returns the previous engine. Waits for the previous engine to drain first.
    """
    global _engine
    if engine is not None and not isinstance(engine, Engine):
        raise TypeError(f"set_engine expects an Engine or None, got {type(engine).__name__}")
    prev = _engine
    if prev is not None and prev is not engine:
        prev.wait_all()
    _engine = engine
    return prev


@contextmanager
def use_engine(engine: Engine) -> Iterator[Engine]:
    """Use `engine` inside the block, then restore the previous one."""
    prev = set_engine(engine)
    try:
        yield engine
    finally:
        set_engine(prev)


@contextmanager
def thread_engine(engine: Engine) -> Iterator[Engine]:
    """Run this thread's ops on `engine` inside the block (other threads keep theirs); the
    block's end waits for what it pushed."""
    prev, _local.engine = _local.engine, engine
    try:
        yield engine
        engine.wait_all()
    finally:
        _local.engine = prev
