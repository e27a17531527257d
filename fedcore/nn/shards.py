"""One training step, over the batch whole or cut into shards that run side by side.

`train_step(model, loss, x, y, optimizer)` is the eager step every caller uses (the client
trainer, the benchmarks): zero the gradients, forward, loss, backward, clip, update. With
several threads (`fedcore.engine.parallel`), the batch is cut into one shard per thread and
each shard's forward and backward runs on a core of its own: data parallelism inside one step.
One hand-off starts all the shards (instead of one per split kernel), and the Python between
kernels, serial in a whole step, runs beside the other shards' kernels. Inside a shard every
kernel runs on one core (fedcore's splits serial, BLAS on one thread).

The first shard runs the model itself on the caller's thread. By default (`BACKEND`) every
other shard runs in a forked worker process (`fedcore.nn.shard_workers`, Linux): the model as
it was when forked, its flat parameters and gradient in memory shared with the caller, which
writes the current parameters and the shard's rows there each step and adds the gradient it
finds there. Each shard's backward is seeded with its share of the rows (rows / N), so the
model's gradient plus the others' (one add each) is the whole batch's gradient up to float
rounding, for a loss that is a mean over rows (`mean_over_rows`). The optimizer then steps
once. Two half-batch shards hold about one batch of activations; each other shard adds a copy
of the gradients (in a worker: of the parameters too, shared).

A process, because thread shards take the GIL from each other between their numpy calls
(im2col, copies and allocations hold it), and each wait is a sleep and a wake-up (voluntary
context switches a step, busy VM: CNN 1.1-1.4 in processes against 5-34 on threads). Busy
2-core VM, `chrt -f 10 python -m benchmarks.shard_backends --case cnn` (`gpt`): 1 thread,
thread shards, process shards, interleaved step by step: CNN at batch 64 31.4 / 18.6 / 17.3
ms and 30.7 / 18.0 / 16.9 (1.81x and 1.82x self, 0.97x PyTorch's 17.8 and 17.4 at two
threads in processes); tiny GPT 304.0 / 173.5 / 161.8 and 286.6 / 171.1 / 157.9 (1.88x and
1.81x self, 1.00x and 0.98x PyTorch). A worker's private memory (USS) at those shapes: CNN
20.7 MB, tiny GPT 41.7 MB (a thread replica's pool peaks at 13.5 and 38.8 MB).

Where a worker cannot serve (no `os.fork`; a module folds what its shards kept through
`join_shards`, as an RNN's final state; a worker of the model was lost), every other shard
runs a replica on a thread of its own (`_Replica`): the same module objects' settings and the
same parameter arrays, but tensors of its own (so engine vars, versions and graph leaves of
its own), a flat gradient buffer of its own, and an engine and a memory pool of its own
(`thread_engine`; `_pools`): no engine bookkeeping is shared between threads and no gradient
is written by two at once. numpy and BLAS release the GIL inside their kernels, so the
shards' kernels overlap; between kernels they wait on the GIL, which wakes threads as
hand-offs do (sleeps per step, all threads, busy VM under chrt: CNN 36 whole against 43 in
shards, tiny GPT 567 against 628).

The step stays whole, and bit for bit what it was, with one thread; with fewer than two rows
per shard or a step too small to pay the hand-off (`MIN_SHARD_WORK`); when a module is not
`per_sample` (BatchNorm while training, dropout: they would mix or draw differently), the loss
is not known to be a mean over rows, the engine is asynchronous, the pool has a memory budget
(memory comes first there), or a module keeps tensors or modules where a replica cannot swap
them (inside a list or a dict).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import numpy as np

from ..engine import MemoryPool, NaiveEngine, Tensor, Var, get_engine
from ..engine.engine import thread_engine
from ..engine.parallel import claim_blas, get_num_threads, serial, side_by_side
from ..engine.tensor import Leaf
from . import shard_workers
from .module import Module

__all__ = ["BACKEND", "MIN_SHARD_WORK", "accumulates", "replica_pools", "shard_count",
           "train_step"]

#: where the shards after the first run: "process" (forked workers, `shard_workers`, where
#: available and the model allows) or "thread" (replicas on threads, `_Replica`)
BACKEND = "process"

#: model -> a memory pool per replica, kept between steps. A replica allocating from the
#: process pool shared its lock and free lists with the caller's shard: a pool of its own
#: recycles its (shard-sized) buffers undisturbed, measured alternating under chrt on the busy
#: VM: CNN 23.2-24.5 -> 20.3-20.8 ms a step, tiny GPT 213-219 -> 200-204 ms. (The process
#: pool's peak no longer counts the replicas' bytes; a pool with a budget is never cut.)
_pools: WeakKeyDictionary[Module, list[MemoryPool]] = WeakKeyDictionary()

#: a shard's multiply-adds must be at least this for the batch to be cut, counted as every
#: weight used once per position of a row (its axes but the last, features or channels; every
#: axis of token ids). The MLP of benchmarks.engine (784-512-256-10, batch 128: 34M a shard)
#: stays whole: at half its batch a shard costs 65 % of the step, and the serial rest
#: (zeroing, adding, the update) leaves a two-thread bound of 1.09x against one thread.
MIN_SHARD_WORK = 256_000_000

Loss = Callable[[Tensor, np.ndarray], Tensor]


class Stepper(Protocol):
    """What the step needs of an optimizer."""

    def zero_grad(self) -> None: ...

    def step(self) -> None: ...


def train_step(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray, optimizer: Stepper,
               max_grad_norm: float | None = None, micro_batch: int | None = None) -> float:
    """One step of `optimizer` on `loss(model(x), y)`; returns the loss. `max_grad_norm`
    clips the gradient first. Sharded over the threads when `shard_count` says so;
    `micro_batch` (rows) runs the batch instead as micro-batches of that many rows one after
    another on the caller's thread, their gradients added (`_accumulated`), where
    `accumulates` allows it: about a micro-batch of activations at a time, the whole batch's
    step up to float rounding."""
    if micro_batch is not None and (type(micro_batch) is not int or micro_batch < 1):
        raise ValueError(f"train_step: micro_batch must be a positive int, got {micro_batch!r}")
    optimizer.zero_grad()
    if micro_batch is not None and accumulates(model, loss, x, y, micro_batch):
        out = _accumulated(model, loss, x, y, micro_batch)
    else:
        shards = shard_count(model, loss, x, y)
        out = _whole(model, loss, x, y) if shards < 2 else _sharded(model, loss, x, y, shards)
    return _finish(model, optimizer, max_grad_norm, out)


def accumulates(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray,
                micro_batch: int) -> bool:
    """Whether a step on (`x`, `y`) may run as micro-batches of `micro_batch` rows: more than
    one of them, a loss that is a mean over rows, every module per sample (no batch norm or
    dropout while training) and none keeping forward state a micro-batch would overwrite (an
    RNN's final state, `join_shards`), a synchronous engine. Otherwise the step stays whole."""
    if micro_batch >= len(x) or not _cuttable(loss, x, y):
        return False
    return all(m.per_sample and type(m).join_shards is Module.join_shards
               for _, m in model.named_modules())


def _cuttable(loss: Loss, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a step's batch can be cut into parts whose gradients add up to the whole's: a
    loss that is a mean over rows, targets a whole multiple of the rows, a synchronous engine
    (what both the shards and the micro-batches need)."""
    return (bool(getattr(loss, "mean_over_rows", False)) and len(x) > 0
            and len(y) % len(x) == 0 and not get_engine().asynchronous)


def replica_pools(model: Module) -> list[MemoryPool]:
    """The memory pools of `model`'s shard replicas (none before a sharded step): what they
    hold is not in the process engine's pool."""
    return list(_pools.get(model, []))


def _finish(model: Module, optimizer: Stepper, max_grad_norm: float | None, out: float) -> float:
    """Clip and step; the loss."""
    if max_grad_norm:
        from ..objectives import clip_grad_norm

        clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    return out


def shard_count(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray) -> int:
    """How many shards a step on batch (`x`, `y`) is cut into (1: the step stays whole).
    `y` has as many rows as `x`, or a whole multiple (a language model's targets, flat)."""
    n = len(x)
    shards = min(get_num_threads(), n // 2)
    if shards < 2 or not _cuttable(loss, x, y) or get_engine().pool.budget_bytes is not None:
        return 1
    weights = 0
    for _, m in model.named_modules():
        if not m.per_sample:
            return 1
        weights += sum(v.size for v in vars(m).values() if isinstance(v, Tensor))
    positions = x[0].size if x.dtype.kind in "iu" else x[0].size // x.shape[-1]
    if n // shards * positions * weights < MIN_SHARD_WORK:
        return 1
    return shards if claim_blas() else 1  # BLAS on one thread, or the shards oversubscribe


def _sharded(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray, shards: int) -> float:
    """Forward and backward of each shard side by side; the replicas' gradients added into
    the model's; the loss's mean over the whole batch."""
    n, per = len(x), len(y) // len(x)  # target rows per input row
    bounds = [n * i // shards for i in range(shards + 1)]
    if BACKEND == "process" and shard_workers.usable(model) and _swappable(model):
        first = x[:bounds[1]], y[:bounds[1] * per], np.float32(bounds[1] / n)

        def own() -> float:
            with serial():  # the other shards have the other cores
                return _forward_backward(model, loss, *first)

        out = shard_workers.run_shards(model, loss, x, y, bounds, _forward_backward, own)
        if out is not None:
            return out
    pools = _pools.setdefault(model, [])
    pools.extend(MemoryPool() for _ in range(shards - 1 - len(pools)))
    replicas = []
    for pool in pools[:shards - 1]:
        rep = _Replica(model, pool)
        if rep.model is None:  # a module keeps what a replica cannot swap: stay whole
            return _whole(model, loss, x, y)
        replicas.append(rep)
    values = [0.0] * shards

    def shard(i: int) -> Callable[[], None]:
        lo, hi = bounds[i], bounds[i + 1]
        seed = np.float32((hi - lo) / n)
        xs, ys = x[lo:hi], y[lo * per:hi * per]

        def run() -> None:
            if i == 0:
                values[0] = _forward_backward(model, loss, xs, ys, seed)
                return
            rep = replicas[i - 1]
            with thread_engine(NaiveEngine(rep.pool)):
                rep.zero_grad()
                values[i] = _forward_backward(rep.model, loss, xs, ys, seed)

        return run

    side_by_side([shard(i) for i in range(shards)])
    eng, grads = get_engine(), model.layout.grads
    for rep in replicas:
        theirs = rep.grads

        def add(theirs: Var = theirs) -> None:
            np.add(grads.data, theirs.data, out=grads.data)

        eng.push(add, (theirs,), (grads,), "shard_grads")
    for orig, copies in zip(model.named_modules(), zip(*(r.modules for r in replicas),
                                                       strict=True), strict=True):
        orig[1].join_shards(list(copies))
    return float(sum(values))


def _accumulated(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray,
                 micro_batch: int) -> float:
    """Forward and backward of each micro-batch in turn, each backward seeded with its share
    of the rows and adding into the gradients the last one left; the mean over the batch.
    Only one micro-batch's activations are alive at a time: LoRA rank 8 on the int8 tiny GPT
    with blocks recomputed, batch 8, T 128, one thread, peaks at 52.8-53.1 MB RSS in
    micro-batches of 2 sequences and 51.1 in micro-batches of 1, against 56.5-57.2 whole
    (busy machine; `python -m benchmarks.engine_layers --threads 1 --case lora`)."""
    n, per = len(x), len(y) // len(x)
    out = 0.0
    for lo in range(0, n, micro_batch):
        hi = min(n, lo + micro_batch)
        out += _forward_backward(model, loss, x[lo:hi], y[lo * per:hi * per],
                                 np.float32((hi - lo) / n))
    return out


def _whole(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray) -> float:
    value = loss(model(Tensor(x)), y)
    value.backward()
    return float(value.data)


def _forward_backward(model: Module, loss: Loss, x: np.ndarray, y: np.ndarray,
                      share: np.float32) -> float:
    """Forward and backward of one shard, its gradient scaled by its share of the rows;
    returns its loss times that share."""
    value = loss(model(Tensor(x)), y)
    value.backward(share)
    return float(value.data) * float(share)


class _Replica:
    """A copy of a model for one shard: its own module objects and tensors over the same
    arrays, every trained parameter's gradient a view of one flat buffer of its own.
    `model` is None when a module keeps a tensor or a module inside a container, or a method
    of one (a replica would share it with the model)."""

    def __init__(self, model: Module, pool: MemoryPool):
        layout = model.layout
        self.pool = pool
        self.grads = Var(pool.alloc((layout.size,), what="shard gradients"),
                         "shard_grads")
        self._grad_of = {id(p): self.grads.view(self.grads.data[o:o + p.size].reshape(p.shape),
                                                f"{name}.grad")
                         for (name, p), o in zip(model.named_parameters(), layout.offsets,
                                                 strict=True)}
        self._memo: dict[int, Any] = {}
        self.model: Module | None = self._module(model)
        self.modules = [m for _, m in self.model.named_modules()] if self.model else []

    def zero_grad(self) -> None:
        """Zero the gradient buffer (an op of this thread's engine)."""
        grads = self.grads

        def zero() -> None:
            grads.data.fill(0)
            grads.mark_zeroed()

        get_engine().push(zero, (), (grads,), "zero_grad")

    def _module(self, m: Module) -> Module | None:
        new = object.__new__(type(m))
        self._memo[id(m)] = new
        state = {}
        for k, v in vars(m).items():
            if k in ("_params", "_modules"):
                continue
            c = self._value(v)
            if c is _REFUSE:
                return None
            state[k] = c
        state["_params"] = {k: self._memo[id(p)] for k, p in m._params.items()}
        state["_modules"] = {k: self._memo[id(c)] for k, c in m._modules.items()}
        new.__dict__.update(state)
        return new

    def _value(self, v: Any) -> Any:
        done = self._memo.get(id(v))
        if done is not None:
            return done
        if isinstance(v, Module):
            new = self._module(v)
            return _REFUSE if new is None else new
        if isinstance(v, Tensor):
            return self._tensor(v)
        if _holds_engine_state([v]):  # a method of one, or a container holding one
            return _REFUSE
        return type(v)(v) if isinstance(v, list | dict) else v  # a list of its own

    def _tensor(self, t: Tensor) -> Any:
        if t._node is not None and type(t._node) is not Leaf:
            return _REFUSE  # a graph's tensor kept on a module
        twin = object.__new__(type(t))
        twin._var = Var(t._var.data, t._var.name)
        twin._node = Leaf(twin) if t._node is not None else None
        twin._grad = self._grad_of.get(id(t))
        self._memo[id(t)] = twin
        return twin


_REFUSE = object()


def _swappable(model: Module) -> bool:
    """Whether no module keeps a tensor, a module or a method of one inside a container
    (where neither a replica nor a worker's snapshot check can see it)."""
    return not any(isinstance(v, list | tuple | dict | set | frozenset) and k not in
                   ("_params", "_modules") and _holds_engine_state(v)
                   for _, m in model.named_modules() for k, v in vars(m).items())


def _holds_engine_state(v: list | tuple | dict | set | frozenset) -> bool:
    """True when a container holds (at any depth) a module, a tensor or a method of one."""
    for item in v.values() if isinstance(v, dict) else v:
        if isinstance(item, Module | Tensor):
            return True
        if isinstance(item, MethodType) and isinstance(item.__self__, Module | Tensor):
            return True
        if isinstance(item, list | tuple | dict | set | frozenset) and _holds_engine_state(item):
            return True
    return False
