"""``unordered``: every call once, on a few threads; the first failure is raised."""

import threading

import pytest

from client_runtime.fleet.parallel import later, unordered


@pytest.mark.parametrize("workers", [1, 3, 50])
def test_every_item_is_called_once(workers):
    seen, lock = [], threading.Lock()

    def call(item):
        with lock:
            seen.append(item)
        return item * item

    assert dict(unordered(call, range(20), workers)) == {i: i * i for i in range(20)}
    assert sorted(seen) == list(range(20))


def test_the_first_failure_is_raised_and_no_thread_is_left():
    before = threading.active_count()

    def call(item):
        if item == 3:
            raise ValueError("object 3 is not on the SuperLink")
        return item

    with pytest.raises(ValueError, match="object 3"):
        list(unordered(call, range(10), 3))
    assert threading.active_count() == before


def test_a_consumer_that_stops_early_leaves_no_thread():
    before = threading.active_count()
    results = unordered(lambda item: item, range(10), 3)
    next(results)
    results.close()
    assert threading.active_count() == before


def test_without_threads_the_calls_run_in_turn(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert [item for item, _ in unordered(lambda item: item, range(5), 3)] == [0, 1, 2, 3, 4]


def test_under_an_address_space_limit_the_calls_run_in_turn(monkeypatch):
    from client_runtime.fleet import parallel

    monkeypatch.setattr(parallel, "address_space_limited", lambda: True)
    threads = set()
    list(unordered(lambda item: threads.add(threading.get_ident()), range(5), 3))
    assert threads == {threading.get_ident()}


def test_a_later_call_runs_beside_the_caller_and_hands_back_its_value_or_error():
    started, go = threading.Event(), threading.Event()

    def call():
        started.set()
        go.wait(30)
        return threading.get_ident()

    pending = later(call)
    assert started.wait(30)  # under way while the caller goes on
    go.set()
    assert pending.result() != threading.get_ident()

    def fail():
        raise ValueError("run 7 is not running")

    with pytest.raises(ValueError, match="run 7"):
        later(fail).result()


def test_a_later_call_is_made_at_once_without_threads_or_under_an_address_space_limit(
        monkeypatch):
    from client_runtime.fleet import parallel

    def refuse(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", refuse)
        assert later(threading.get_ident).result() == threading.get_ident()
    monkeypatch.setattr(parallel, "address_space_limited", lambda: True)
    calls = []
    pending = later(lambda: calls.append(threading.get_ident()))
    assert calls == [threading.get_ident()]  # made before later() returned
    pending.result()
