"""The threaded engine: same results as the synchronous one, dependency order, errors."""

import threading
import time

import numpy as np
import pytest

from fedcore.engine import (
    ENV_VAR,
    EngineError,
    MutationError,
    NaiveEngine,
    Var,
    add_,
    engine_from_env,
    get_engine,
    mul,
    relu,
    softmax_cross_entropy,
    sum,
    tensor,
    use_engine,
)
from fedcore.engine.threaded import ThreadedEngine
from fedcore.models import mlp
from fedcore.optim import SGD

TIMEOUT = 10.0


@pytest.fixture
def threaded():
    eng = ThreadedEngine(num_workers=3)
    with use_engine(eng):
        yield eng
    eng.shutdown()


def train(eng, steps=4):
    with use_engine(eng):
        model = mlp(12, 4, hidden=(16, 8), seed=3)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(steps):
            x = rng.standard_normal((10, 12)).astype(np.float32)
            y = rng.integers(0, 4, 10)
            opt.zero_grad()
            loss = softmax_cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        flat, grads = model.get_flat(), model.grad_flat().copy()
        eng.wait_all()
    return losses, flat, grads


def test_training_is_bitwise_identical_to_the_naive_engine():
    ref = train(NaiveEngine())
    eng = ThreadedEngine(num_workers=3)
    try:
        got = train(eng)
    finally:
        eng.shutdown()
    assert got[0] == ref[0]
    assert np.array_equal(got[1], ref[1]) and np.array_equal(got[2], ref[2])


def test_read_after_write_and_write_after_read(threaded):
    v = Var(np.zeros(1), "v")
    log = []
    gate = threading.Event()

    def slow_write():
        assert gate.wait(TIMEOUT)
        v.data[0] = 7
        log.append("w1")

    threaded.push(slow_write, (), (v,), "w1")
    threaded.push(lambda: log.append(("r", v.data[0])), (v,), (), "r")  # must see 7
    threaded.push(lambda: log.append("w2"), (), (v,), "w2")  # must wait for the read
    time.sleep(0.05)
    assert log == []  # everything waits for the first write
    gate.set()
    threaded.wait_for_var(v)
    assert log == ["w1", ("r", 7.0), "w2"] and v.version == 2


def test_reads_of_one_var_run_at_once(threaded):
    v = Var(np.ones(1), "v")
    barrier = threading.Barrier(2, timeout=TIMEOUT)  # breaks unless both readers are inside
    met = []
    for i in range(2):
        threaded.push(lambda i=i: met.append(barrier.wait() + 10 * i), (v,), (), f"r{i}")
    threaded.wait_all()
    assert sorted(m // 10 for m in met) == [0, 1] and v.version == 0


def test_delete_var_waits_for_pending_readers(threaded):
    pool = threaded.pool
    v = Var(pool.alloc(1000), "big")
    before = pool.live_bytes
    gate = threading.Event()
    seen = []
    threaded.push(lambda: (gate.wait(TIMEOUT), seen.append(v.data.size)), (v,), (), "reader")
    threaded.delete_var(v)
    time.sleep(0.05)
    assert v.data is not None and pool.live_bytes == before  # the reader still holds it
    gate.set()
    threaded.wait_all()
    assert seen == [1000] and v.data is None and pool.live_bytes == before - 4000


def test_delete_var_on_the_naive_engine(engine):
    v = Var(engine.pool.alloc(10), "v")
    engine.delete_var(v)
    assert v.data is None and engine.pool.live_bytes == 0


def test_an_error_surfaces_at_the_next_wait_with_the_op_name(threaded):
    a, b, c = Var(np.zeros(2), "a"), Var(np.zeros(2), "b"), Var(np.zeros(2), "c")
    ran = []

    def boom():
        raise ValueError("bad shapes")

    threaded.push(boom, (a,), (b,), "my_op")
    threaded.push(lambda: ran.append("dependent"), (b,), (c,), "dependent")  # skipped
    threaded.push(lambda: ran.append("independent"), (a,), (), "independent")
    with pytest.raises(ValueError, match="bad shapes") as err:
        threaded.wait_all()
    notes = " ".join(err.value.__notes__)
    assert "'my_op'" in notes and "1 dependent op(s) were skipped" in notes
    assert ran == ["independent"]
    threaded.wait_all()  # reported once; the engine keeps working
    threaded.push(lambda: ran.append("after"), (b,), (), "after")
    threaded.wait_all()
    assert ran[-1] == "after"


def test_the_result_of_a_failed_op_keeps_failing(threaded):
    x, w = tensor(np.ones((3, 4), np.float32)), tensor(np.ones((5, 2), np.float32))
    y = x @ w  # wrong inner dimension: fails on a worker
    with pytest.raises(ValueError) as err:
        threaded.wait_all()
    assert "'matmul'" in " ".join(err.value.__notes__)
    z = relu(y)  # reads the failed value: skipped, and says why
    with pytest.raises(ValueError) as err:
        z.numpy()
    assert "'matmul'" in " ".join(err.value.__notes__)


def test_waiting_inside_an_op_is_rejected(threaded):
    v = Var(np.zeros(1), "v")
    threaded.push(lambda: threaded.wait_for_var(v), (), (), "waits")
    with pytest.raises(EngineError, match="inside running op 'waits'"):
        threaded.wait_all()


def test_mutation_error_surfaces_under_the_threaded_engine(threaded):
    a = tensor(np.ones(3, np.float32))
    a.requires_grad = True
    x = tensor(np.arange(3, dtype=np.float32))
    y = mul(a, x)
    add_(x, 1.0)
    with pytest.raises(MutationError, match="'mul'"):  # backward is a sync point
        sum(y).backward()
    with pytest.raises(MutationError):  # its gradient was never computed: it says why
        _ = a.grad


def test_env_var_and_code_select_the_threaded_engine(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "threaded")
    eng = engine_from_env()
    try:
        assert isinstance(eng, ThreadedEngine) and eng.asynchronous
        with use_engine(eng):
            assert get_engine() is eng
    finally:
        eng.shutdown()
    with pytest.raises(EngineError, match="shut down"):
        eng.push(lambda: None, (), (), "late")
