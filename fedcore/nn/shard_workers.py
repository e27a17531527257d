"""The shards of a step after the first, each in a forked process of its own (Linux).

Thread shards (`fedcore.nn.shards`) overlap their kernels but take the GIL from each other
between numpy calls (im2col, copies, allocations hold it), and each wait is a sleep and a
wake-up. A shard in a process of its own has an interpreter of its own, as PyTorch's DataLoader
and DDP workers do: a step costs two messages, not a GIL hand-off per numpy call.

A `_Worker` is forked lazily at a model's first sharded step: the child is the model as it was
then (copy-on-write), serving one shard per step until its command pipe closes. Before the
fork, one anonymous shared mapping is laid out as the flat parameters, the flat gradients, and
room for the shard's input and target rows; in the child the model's flat parameters and
gradients become that mapping (`worker_model.adopt`), so neither is copied there. Each step the
parent copies its current flat parameters and the shard's rows in, writes one message (rows,
share), runs its own shard (its kernels serial: `parallel.serial`), and reads the child's one
reply (the loss share, or the child's exception, pickled, raised in the parent); the child
marks its parameters rewritten (a new version), runs forward and backward seeded with its share
of the rows, and so leaves its gradient in the mapping, which the parent adds into the model's.
Everything else the child holds is a snapshot, so a worker serves only while the model's
structure, its tensors other than the flat parameters (id and version: an int8 base, buffers),
every module's plain settings, the loss and the batch's row geometry are those it was forked
with (`worker_model.signature`); otherwise it is stopped and a new one forked.

The child runs numpy and fedcore only: one thread (BLAS included), an engine and a memory pool
of its own, SIGINT ignored (the parent decides), the garbage collector kept off the parent's
objects (`gc.freeze` around the fork) so pages stay shared, the parent's pool's recycled
buffers dropped (the parent rewrites them every step: each write would leave the child a
private copy of the old page). It exits (`os._exit`) when its command pipe reaches EOF: the
parent closed it (the model was collected, the interpreter exits: `weakref.finalize`) or died.
A worker closes every descriptor it inherited but its own pipe ends (a connection the parent
closes must not stay open in it, nor a port bound), and every other fork of the parent closes
the workers' pipe ends (`os.register_at_fork`), so EOF is never held back by a stranger. A
child that dies or stops answering (no reply within `_patience`) is killed and reaped, its
shard is run in the parent, and the model goes back to thread shards (`RuntimeWarning`). Only
the `MAX_MODELS` most recently stepped models keep workers (a simulation holding many clients'
models does not hold as many processes).
"""

from __future__ import annotations

import gc
import mmap
import os
import select
import signal
import struct
import sys
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from ..engine import MemoryPool, NaiveEngine, get_engine
from ..engine.engine import thread_engine
from ..engine.parallel import set_num_threads
from .module import Module
from .worker_model import adopt, loaded, signature
from .worker_pipe import pickled, read_exactly, unpickled, write_all

__all__ = ["MAX_MODELS", "available", "run_shards", "usable", "worker_memory", "worker_pids"]

_GO = struct.Struct("<qd")  # input rows of the shard, its share of the batch's rows
_REPLY = struct.Struct("<bqd")  # 0 ok / 1 error, bytes of the pickled error after it, loss

#: models that keep workers at once: a process that holds many models (a simulation's
#: clients) stops the workers of the least recently stepped one to fork for another
MAX_MODELS = 2

#: model -> its workers, in shard order (shards 1, 2, ...)
_workers: WeakKeyDictionary[Module, list[_Worker]] = WeakKeyDictionary()
_last_step: WeakKeyDictionary[Module, int] = WeakKeyDictionary()  # model -> step count
_steps = [0]
#: models whose worker died or hung once: thread shards from then on
_refused: weakref.WeakSet[Module] = weakref.WeakSet()
#: pid -> the pipe ends of every worker this process started and has not stopped
_live: dict[int, tuple[int, int]] = {}


_in_child = [False]  # True in a worker: it never forks workers of its own


def available() -> bool:
    """Whether shards may run in forked processes here: Linux (fork is unsafe on macOS with
    its system frameworks, absent on Windows), and not inside a shard worker already."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and not _in_child[0]


def worker_pids(model: Module) -> list[int]:
    """The process ids of `model`'s shard workers (none before a sharded step)."""
    return [w.pid for w in _workers.get(model, [])]


def worker_memory(model: Module) -> int:
    """Bytes of private memory (USS: pages no other process shares, from
    /proc/PID/smaps_rollup) that `model`'s shard workers hold now; what they add to the
    parent's footprint."""
    total = 0
    for pid in worker_pids(model):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, *rest = line.split()
                    if key in ("Private_Clean:", "Private_Dirty:"):
                        total += int(rest[0]) * 1024
        except OSError:  # exited meanwhile
            continue
    return total


Step = Callable[[Module, Any, np.ndarray, np.ndarray, np.float32], float]


def usable(model: Module) -> bool:
    """Whether `model`'s shards may run in processes: forking is available, no module folds
    what its shards kept (`join_shards`, an RNN's final state: it would stay in the child),
    and the model has not fallen back after a failed worker."""
    return available() and model not in _refused and all(
        type(m).join_shards is Module.join_shards for _, m in model.named_modules())


def run_shards(model: Module, loss: Any, x: np.ndarray, y: np.ndarray, bounds: list[int],
               step: Step, own: Callable[[], float]) -> float | None:
    """Shards 1.. of the batch cut at `bounds` in workers while `own()` runs shard 0 here;
    their gradients added into the model's. Returns the loss (own's share plus theirs), or
    None, having run nothing, when no worker could be forked (the caller runs threads)."""
    n, per = len(x), len(y) // len(x)
    sig = signature(model, loss, x, y)
    rows = max(bounds[i + 1] - bounds[i] for i in range(1, len(bounds) - 1))
    workers = _workers.get(model, [])
    _steps[0] += 1
    _last_step[model] = _steps[0]
    if len(workers) != len(bounds) - 2 or any(not w.fits(sig, rows) for w in workers):
        for w in _workers.pop(model, []):
            w.stop()
        while len(_workers) >= MAX_MODELS:
            for w in _workers.pop(min(_workers, key=lambda m: _last_step.get(m, 0))):
                w.stop()
        workers = []
        try:
            for _ in range(len(bounds) - 2):
                workers.append(_Worker(model, loss, step, sig, model.layout.size, rows, x, y))
        except OSError as exc:  # no memory or processes left for a fork
            for w in workers:
                w.stop()
            _refused.add(model)
            warnings.warn(f"no shard worker could be forked ({exc}); this model's shards run "
                          "on threads", RuntimeWarning, stacklevel=3)
            return None
        _workers[model] = workers
    root, layout = model._flat()
    for w, lo, hi in zip(workers, bounds[1:-1], bounds[2:], strict=True):
        w.send(root.data, x[lo:hi], y[lo * per:hi * per], np.float32((hi - lo) / n))
    error: BaseException | None = None
    start = time.monotonic()
    try:
        total = own()
    except BaseException as exc:  # the workers' replies are read all the same
        error, total = exc, 0.0
    took = time.monotonic() - start
    grads = layout.grads.data
    for i, w in enumerate(workers):
        try:
            total += w.receive(_patience(took), grads)
        except _Lost as lost:
            _fall_back(model, lost)
            lo, hi = bounds[i + 1], bounds[i + 2]
            if error is None:
                total += step(model, loss, x[lo:hi], y[lo * per:hi * per],
                              np.float32((hi - lo) / n))
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return total


def _patience(own_seconds: float) -> float:
    """How long a worker may take for a shard the parent did in `own_seconds`: long enough
    for any load on the machine, short enough that a hung child is noticed."""
    return 60.0 + 100.0 * own_seconds


def _fall_back(model: Module, lost: _Lost) -> None:
    for w in _workers.pop(model, []):
        w.stop()
    _refused.add(model)
    warnings.warn(f"a shard worker of this model was lost ({lost}); its shards run on "
                  "threads from now on", RuntimeWarning, stacklevel=3)


class _Lost(Exception):
    """A worker died or stopped answering."""


class _Worker:
    """One forked shard process and the shared mapping it reads and writes."""

    def __init__(self, model: Module, loss: Any, step: Step, sig: tuple, size: int, rows: int,
                 x: np.ndarray, y: np.ndarray):
        self.sig, self.rows, self._per = sig, rows, len(y) // len(x)
        xb, yb = rows * x[0].nbytes, rows * self._per * y[0].nbytes
        self._shm = mmap.mmap(-1, max(1, 8 * size + xb + yb))
        buf = np.frombuffer(self._shm, np.uint8)
        self.params = buf[:4 * size].view(np.float32)
        self.grads = buf[4 * size:8 * size].view(np.float32)
        self._x = (buf[8 * size:8 * size + xb], x.shape[1:], x.dtype)
        self._y = (buf[8 * size + xb:8 * size + xb + yb], y.shape[1:], y.dtype)
        go_r, self._go = os.pipe()
        self._reply, reply_w = os.pipe()
        self.pid = self._fork(model, loss, step, go_r, reply_w)
        os.close(go_r)
        os.close(reply_w)
        _live[self.pid] = (self._go, self._reply)
        self._finalizer = weakref.finalize(model, _stop, self._go, self._reply, self.pid,
                                           os.getpid())

    def _fork(self, model: Module, loss: Any, step: Step, go_r: int, reply_w: int) -> int:
        gc.freeze()  # the child's collector then never writes to the parent's objects' pages
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns that forking a threaded process may deadlock the child:
                # this child takes no other thread's lock (its engine, pool and intra-op state
                # are its own) and `_patience` bounds a hang all the same
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _close_fds_but(0, 1, 2, go_r, reply_w)
                    self._serve(model, loss, step, go_r, reply_w)
                    code = 0
                except BaseException:  # outside a step: the parent sees EOF and falls back
                    os.write(2, traceback.format_exc().encode(errors="replace"))
                finally:
                    os._exit(code)  # never back into the parent's code (a test runner...)
        finally:
            gc.unfreeze()
        return pid

    def _view(self, which: tuple, rows: int) -> np.ndarray:
        raw, shape, dtype = which
        arr = raw.view(dtype) if raw.size else np.empty(0, dtype)
        return arr[:rows * int(np.prod(shape, dtype=np.int64))].reshape((rows, *shape))

    def _serve(self, model: Module, loss: Any, step: Step, go_r: int, reply_w: int) -> None:
        """The child's loop: one shard per message until EOF."""
        _in_child[0] = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's Python handler
        set_num_threads(1)
        parents = get_engine().pool
        parents.forget_after_fork()
        with thread_engine(NaiveEngine(MemoryPool())):
            root = adopt(model, self.params, self.grads)
            parents.release_cached()  # the old flat buffers, dead here, went to its cache
            while True:
                msg = read_exactly(go_r, _GO.size)
                if msg is None:
                    return
                rows, share = _GO.unpack(msg)
                try:
                    get_engine().push(loaded, (), (root,), "shard_params")  # a new version
                    model.zero_grad()
                    value = step(model, loss, self._view(self._x, rows),
                                 self._view(self._y, rows * self._per), np.float32(share))
                    get_engine().wait_all()
                    reply = _REPLY.pack(0, 0, value)
                except BaseException as exc:
                    exc.add_note("(in the shard worker process "
                                 + f"{os.getpid()}:\n{''.join(traceback.format_exc())})")
                    payload = pickled(exc)
                    reply = _REPLY.pack(1, len(payload), 0.0) + payload
                write_all(reply_w, reply)

    def fits(self, sig: tuple, rows: int) -> bool:
        """Whether this worker can serve a step of signature `sig` with `rows` rows."""
        return self._finalizer.alive and rows <= self.rows and sig == self.sig

    def send(self, params: np.ndarray, x: np.ndarray, y: np.ndarray, share: np.float32) -> None:
        """Hand the worker this step's parameters and its rows."""
        np.copyto(self.params, params)
        self._view(self._x, len(x))[...] = x
        self._view(self._y, len(y))[...] = y
        try:
            write_all(self._go, _GO.pack(len(x), float(share)))
            self._sent = True
        except BrokenPipeError:  # it died: `receive` reports it
            self._sent = False

    def receive(self, patience: float, grads: np.ndarray) -> float:
        """Wait (at most `patience` seconds) for the worker's reply; add its gradient into
        `grads`; its loss share. Raises the child's error, or `_Lost`."""
        try:
            status, value, payload = self._reply_of(patience)
        except BaseException:  # lost, or interrupted mid-wait: no later step reads this reply
            self.stop(kill=True)
            raise
        if status:
            raise unpickled(payload)
        np.add(grads, self.grads, out=grads)
        return value

    def _reply_of(self, patience: float) -> tuple[int, float, bytes]:
        if not self._sent:
            raise _Lost("the worker process exited")
        ready, _, _ = select.select([self._reply], [], [], patience)
        if not ready:
            raise _Lost(f"no reply within {patience:.0f} s")
        head = read_exactly(self._reply, _REPLY.size)
        status, length, value = _REPLY.unpack(head) if head else (0, 0, 0.0)
        payload = read_exactly(self._reply, length) if status else b""
        if head is None or payload is None:
            raise _Lost("the worker process exited")
        return status, value, payload

    def stop(self, kill: bool = False) -> None:
        """Close the worker's pipe (it exits on EOF) and reap it."""
        if kill and self._finalizer.alive:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._finalizer()


def _stop(go: int, reply: int, pid: int, owner: int) -> None:
    """Close a worker's pipe ends and reap it (the model's finalizer; also at exit)."""
    if os.getpid() != owner:  # a fork of the parent: not its child
        return
    _live.pop(pid, None)
    for fd in (go, reply):
        try:
            os.close(fd)
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.001)


def _after_fork_in_child() -> None:
    """Any fork of a process with workers (a worker being forked too): close their pipe ends,
    so that each worker sees EOF when its parent goes; they are not this child's to stop."""
    for fds in _live.values():
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
    _live.clear()
    _workers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_fds_but(*keep: int) -> None:
    """In a worker: close every inherited descriptor but `keep` (the parent's sockets, files
    and pipes: a connection the parent closes must not stay open here, nor a port bound)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, already gone
                pass
