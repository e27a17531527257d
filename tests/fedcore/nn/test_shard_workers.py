"""Shards in forked worker processes: the whole batch's step, a worker that follows the
model's weights and batches, errors and lost workers surfaced without a hang, no process
left behind, and thread shards wherever a worker cannot serve."""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from fedcore.engine import Tensor, get_engine, softmax_cross_entropy
from fedcore.engine.parallel import set_num_threads
from fedcore.nn import Dense, shard_workers, shards
from tests.fedcore.engine.test_parallel import two_threads
from tests.fedcore.nn.test_shards import LR, MODELS, _assert_same_step, _data, _step

pytestmark = pytest.mark.skipif(not shard_workers.available(), reason="needs os.fork on Linux")


@pytest.fixture
def processes(monkeypatch) -> Iterator[None]:
    """Two threads, any step worth cutting, the second shard in a worker process; after the
    test, with its models gone, no worker left (all reaped)."""
    monkeypatch.setattr(shards, "MIN_SHARD_WORK", 0)
    monkeypatch.setattr(shards, "BACKEND", "process")
    with two_threads():
        yield
    gc.collect()
    assert shard_workers._live == {}


def _gone(pid: int) -> bool:
    """True when `pid` is no child of this process any more (exited and reaped)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


KINDS = ["cnn", "gpt", "gpt-blocks", "gpt-lora-int8", "mlp"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_runs_the_second_shard_of_the_whole_batch_step(processes, kind):
    make = MODELS[kind]
    x, y = _data(kind.split("-")[0])
    model = make()
    cut = _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    assert pid != os.getpid() and not _gone(pid)
    set_num_threads(1)
    _assert_same_step(make, x, y, cut, _step(make(), x, y))


def _loaded(make, flat: np.ndarray):
    """A maker of `make`'s model with the flat parameters `flat`."""
    def build():
        fresh = make()
        fresh.set_flat(flat)
        return fresh

    return build


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_worker_steps_with_the_parents_current_weights(processes, kind):
    make = MODELS[kind]
    x, y = _data(kind.split("-")[0])
    model = make()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    rng = np.random.default_rng(5)
    other = make().get_flat() * rng.uniform(0.5, 1.5, model.layout.size).astype(np.float32)
    model.set_flat(other)  # a round's new global weights: nothing the worker forked with
    cut = _step(model, x, y)
    assert shard_workers.worker_pids(model) == [pid]
    set_num_threads(1)
    _assert_same_step(_loaded(make, other), x, y, cut, _step(_loaded(make, other)(), x, y))


def _frozen_edit(model) -> None:
    """Halve the first tensor of `model` that is not a trained parameter (through the engine:
    its version moves, as any write's does)."""
    trained = {id(p) for p in model.parameters()}
    t = next(v for _, m in model.named_modules() for v in vars(m).values()
             if isinstance(v, Tensor) and id(v) not in trained and v.dtype == np.float32)
    var = t.var
    get_engine().push(lambda: np.multiply(var.data, np.float32(0.5), out=var.data), (),
                      (var,), "edit")


def test_a_frozen_tensor_written_in_the_parent_forks_a_new_worker(processes):
    make = MODELS["gpt-lora-int8"]
    x, y = _data("gpt")
    model = make()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    before = model.get_flat()
    _frozen_edit(model)
    cut = _step(model, x, y)
    assert shard_workers.worker_pids(model) not in ([], [pid]) and _gone(pid)

    def edited():
        fresh = _loaded(make, before)()
        _frozen_edit(fresh)
        return fresh

    set_num_threads(1)
    _assert_same_step(edited, x, y, cut, _step(edited(), x, y))


def test_the_worker_follows_new_weights_and_smaller_batches(processes):
    make = MODELS["cnn"]
    x, y = _data("cnn", n=9)
    model = make()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    other = make().get_flat() * np.float32(0.5)  # a round's new global weights
    model.set_flat(other)
    cut = _step(model, x[:6], y[:6])  # the last, smaller batch of an epoch
    assert shard_workers.worker_pids(model) == [pid]

    def loaded():
        fresh = make()
        fresh.set_flat(other)
        return fresh

    set_num_threads(1)
    _assert_same_step(loaded, x[:6], y[:6], cut, _step(loaded(), x[:6], y[:6]))


def test_a_bigger_batch_or_a_changed_model_forks_a_new_worker(processes):
    x, y = _data("cnn", n=11)
    model = MODELS["cnn"]()
    _step(model, x[:6], y[:6])
    (first,) = shard_workers.worker_pids(model)
    _step(model, x, y)  # more rows than the worker has room for
    (second,) = shard_workers.worker_pids(model)
    assert second != first and _gone(first)
    model.eval().train()  # the same settings again: the same worker
    _step(model, x, y)
    assert shard_workers.worker_pids(model) == [second]

    def swapped():
        fresh = MODELS["cnn"]()
        setattr(fresh, "10", Dense(8, 4, seed=3))  # a new head: a new parameter set
        return fresh

    setattr(model, "10", Dense(8, 4, seed=3))
    model.set_flat(swapped().get_flat())
    cut = _step(model, x, y)
    (third,) = shard_workers.worker_pids(model)
    assert third != second and _gone(second)
    set_num_threads(1)
    _assert_same_step(swapped, x, y, cut, _step(swapped(), x, y))


class _ChildOnly:
    """A mean-over-rows loss that fails in any process but the one that made it."""

    mean_over_rows = True

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self, out, target):
        if os.getpid() != self.parent:
            raise ValueError("only in the worker")
        return softmax_cross_entropy(out, target)


def test_an_error_in_the_worker_raises_in_the_parent_and_the_next_step_runs(processes):
    from fedcore.nn.shards import train_step
    from fedcore.optim import SGD

    x, y = _data("cnn")
    model = MODELS["cnn"]()
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="only in the worker") as caught:
        train_step(model, _ChildOnly(), x, y, opt)
    assert any("shard worker process" in note for note in caught.value.__notes__)
    loss, grad, _ = _step(model, x, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_a_lost_worker_is_replaced_by_a_thread_shard(processes):
    make = MODELS["gpt"]
    x, y = _data("gpt")
    model = make()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    before = model.get_flat()
    os.kill(pid, signal.SIGKILL)
    with pytest.warns(RuntimeWarning, match="shard worker of this model was lost"):
        cut = _step(model, x, y)
    assert shard_workers.worker_pids(model) == [] and _gone(pid)

    _assert_whole_step_from(make, before, x, y, cut)


def _assert_whole_step_from(make, before, x, y, cut) -> None:
    """`cut` (loss, gradient, parameters) is what one whole step on one thread gives from
    parameters `before`."""

    def loaded():
        fresh = make()
        fresh.set_flat(before)
        return fresh

    set_num_threads(1)
    _assert_same_step(loaded, x, y, cut, _step(loaded(), x, y))


class _StuckInChild(_ChildOnly):
    """A loss that hangs in any process but the one that made it."""

    def __call__(self, out, target):
        if os.getpid() != self.parent:
            time.sleep(600)
        return softmax_cross_entropy(out, target)


def test_a_worker_that_stops_answering_is_killed_and_its_shard_run_here(processes,
                                                                         monkeypatch):
    from fedcore.nn.shards import train_step
    from fedcore.optim import SGD

    monkeypatch.setattr(shard_workers, "_patience", lambda own_seconds: 0.5)
    make = MODELS["cnn"]
    x, y = _data("cnn")
    model = make()
    before = model.get_flat()
    opt = SGD(model.parameters(), lr=LR, momentum=0.9)  # as `_step`'s
    with pytest.warns(RuntimeWarning, match="no reply within"):
        loss = train_step(model, _StuckInChild(), x, y, opt)
    assert shard_workers.worker_pids(model) == []

    def loaded():
        fresh = make()
        fresh.set_flat(before)
        return fresh

    set_num_threads(1)
    cut = loss, model.grad_flat().copy(), model.get_flat()
    _assert_same_step(loaded, x, y, cut, _step(loaded(), x, y))


def test_a_step_interrupted_while_waiting_leaves_no_reply_for_the_next(processes,
                                                                        monkeypatch):
    make = MODELS["cnn"]
    x, y = _data("cnn")
    model = make()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(shard_workers, "select", SimpleNamespace(select=interrupted))
        with pytest.raises(KeyboardInterrupt):
            _step(model, x, y)
    assert _gone(pid)  # its pending reply went with it
    before = model.get_flat()
    cut = _step(model, x, y)
    assert shard_workers.worker_pids(model) not in ([], [pid])

    _assert_whole_step_from(make, before, x, y, cut)


def test_a_worker_keeps_none_of_the_parents_descriptors(processes):
    x, y = _data("cnn")
    model = MODELS["cnn"]()
    with socket.socket() as held:  # as a client's connection would be
        _step(model, x, y)
        (pid,) = shard_workers.worker_pids(model)
        theirs = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        assert held.fileno() not in theirs
        assert len(theirs - {0, 1, 2}) == 2  # its two pipe ends


def test_no_worker_outlives_its_model(processes):
    x, y = _data("cnn")
    model = MODELS["cnn"]()
    _step(model, x, y)
    (pid,) = shard_workers.worker_pids(model)
    del model
    gc.collect()
    assert _gone(pid)


def test_only_the_most_recently_stepped_models_keep_workers(processes, monkeypatch):
    monkeypatch.setattr(shard_workers, "MAX_MODELS", 1)
    x, y = _data("cnn")
    first, second = MODELS["cnn"](), MODELS["cnn"]()
    _step(first, x, y)
    (pid,) = shard_workers.worker_pids(first)
    _step(second, x, y)
    assert shard_workers.worker_pids(first) == [] and _gone(pid)
    assert len(shard_workers.worker_pids(second)) == 1


@pytest.mark.parametrize("why", ["rnn state", "no fork", "fork fails"])
def test_thread_shards_where_a_worker_cannot_serve(processes, monkeypatch, why):
    kind = "lstm" if why == "rnn state" else "cnn"
    if why == "no fork":
        monkeypatch.setattr(shard_workers, "available", lambda: False)
    if why == "fork fails":
        def no_room() -> int:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(os, "fork", no_room)
    make = MODELS[kind]
    x, y = _data(kind)
    model = make()
    if why == "fork fails":
        with pytest.warns(RuntimeWarning, match="no shard worker could be forked"):
            cut = _step(model, x, y)
    else:
        cut = _step(model, x, y)
    assert shard_workers.worker_pids(model) == [] and shards.replica_pools(model)
    set_num_threads(1)
    _assert_same_step(make, x, y, cut, _step(make(), x, y))
