"""The dependency engine: read/write sets, versions, env selection."""

import numpy as np
import pytest

from fedcore.engine import (
    ENV_VAR,
    DependencyTracker,
    EngineError,
    NaiveEngine,
    Var,
    engine_from_env,
    expected_version,
    get_engine,
    set_engine,
    use_engine,
)
from fedcore.engine.deps import OpRecord, normalize


def test_push_runs_now_and_bumps_only_writes(engine):
    a, b = Var(np.zeros(3), "a"), Var(np.ones(3), "b")
    calls = []

    def fn():
        calls.append(a.version)
        a.data += b.data

    engine.push(fn, reads=[b], writes=[a], name="acc")
    assert calls == [0]  # ran synchronously, before the bump
    assert (a.version, b.version) == (1, 0)
    assert a.last_writer == "acc"
    np.testing.assert_array_equal(a.data, np.ones(3))


def test_read_write_overlap_is_rejected(engine):
    a = Var(np.zeros(4), "a")
    with pytest.raises(EngineError, match="'a#.*both"):
        engine.push(lambda: None, reads=[a], writes=[a], name="bad")
    view = a.view(a.data[:2], "a_head")
    with pytest.raises(EngineError, match="both"):
        engine.push(lambda: None, reads=[view], writes=[a], name="bad")
    assert a.version == 0


def test_views_share_version_with_their_root(engine):
    root = Var(np.zeros(4), "flat")
    head, tail = root.view(root.data[:2], "head"), root.view(root.data[2:], "tail")
    engine.push(lambda: None, reads=[], writes=[head], name="w")
    assert root.version == head.version == tail.version == 1
    assert tail.is_view and tail.root is root and not root.is_view


def test_failed_op_still_releases_and_bumps(engine):
    a = Var(np.zeros(2), "a")

    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        engine.push(boom, reads=[], writes=[a], name="boom")
    assert a.version == 1  # possibly half-written: saved copies must not trust it
    engine.push(lambda: None, reads=[a], writes=[], name="after")  # nothing left held


def test_nested_push_that_would_deadlock_is_rejected(engine):
    a, b, c = Var(np.zeros(1), "a"), Var(np.zeros(1), "b"), Var(np.zeros(1), "c")

    def outer():
        engine.push(lambda: None, reads=[b], writes=[c], name="inner_ok")  # disjoint: fine
        engine.push(lambda: None, reads=[a], writes=[], name="inner_bad")  # outer writes a

    with pytest.raises(EngineError, match="inner_bad.*deadlock"):
        engine.push(outer, reads=[b], writes=[a], name="outer")
    with pytest.raises(EngineError):
        engine.push(lambda: engine.wait_for_var(a), reads=[], writes=[a], name="waits_on_self")


def test_tracker_orders_reads_and_writes_fifo():
    """The scheduling core a threaded engine will drive: ops become ready in dependency order."""
    deps = DependencyTracker()
    v = Var(np.zeros(1), "v")

    def op(name, reads=(), writes=()):
        r, w = normalize(reads, writes, name)
        return OpRecord(lambda: None, r, w, name)

    w1, r1, r2, w2, r3 = op("w1", writes=[v]), op("r1", [v]), op("r2", [v]), \
        op("w2", writes=[v]), op("r3", [v])
    assert deps.add(w1)
    assert not deps.add(r1) and not deps.add(r2) and not deps.add(w2) and not deps.add(r3)
    assert expected_version(v) == 2 and v.version == 0
    assert deps.blocker(op("probe", [v])) is v
    assert [o.name for o in deps.complete(w1)] == ["r1", "r2"]  # both reads at once
    assert v.version == 1
    assert deps.complete(r1) == []
    assert [o.name for o in deps.complete(r2)] == ["w2"]  # write waits for every read
    assert [o.name for o in deps.complete(w2)] == ["r3"]
    assert deps.complete(r3) == [] and v.version == 2 and v._dep_queue is None


def test_env_var_selects_engine(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "naive")
    assert isinstance(engine_from_env(), NaiveEngine)
    monkeypatch.setenv(ENV_VAR, "threaded-please")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='threaded-please'.*naive"):
        engine_from_env()
    prev = set_engine(None)  # the next get_engine() reads the variable
    try:
        with pytest.raises(ValueError, match=ENV_VAR):
            get_engine()
    finally:
        set_engine(prev)


def test_use_engine_restores_previous(engine):
    other = NaiveEngine()
    with use_engine(other):
        assert get_engine() is other
    assert get_engine() is engine
    with pytest.raises(TypeError):
        set_engine("naive")
