"""Polls timed to when an answer is likely (``client_runtime.fleet.cadence``), on a made-up
clock: no sleeping, nothing that depends on this machine's speed."""

from __future__ import annotations

import pytest

from client_runtime.fleet.cadence import REMEMBERED, Cadence


def test_without_a_wait_on_there_is_no_cadence():
    cadence = Cadence(step=0.04, longest=0.2)
    assert cadence.wait(10.0) is None
    cadence.start("train", 10.0)
    cadence.arrived(10.3)
    assert cadence.wait(10.4) is None  # the answer came: the wait is over


def test_a_first_wait_asks_every_step_then_ever_less_often_up_to_the_longest():
    cadence = Cadence(step=0.04, longest=0.2, hot=1.0)
    cadence.start("train", 100.0)
    assert cadence.wait(100.0) == pytest.approx(0.04)
    assert cadence.wait(100.9) == pytest.approx(0.04)  # still hot
    waits = [cadence.wait(101.0 + i) for i in range(6)]
    assert waits == sorted(waits) and waits[0] > 0.04  # growing once the hot period is over
    assert waits[-1] == pytest.approx(0.2)


def test_a_known_kind_is_first_asked_for_at_the_lead_of_its_expected_time():
    cadence = Cadence(step=0.04, longest=0.2, hot=0.1, lead=0.5)
    cadence.start("train", 0.0)
    cadence.arrived(0.4)
    cadence.start("train", 10.0)
    assert cadence.wait(10.0) == pytest.approx(0.2)  # not before half of 0.4 s
    assert cadence.wait(10.15) == pytest.approx(0.05)
    assert cadence.wait(10.21) == pytest.approx(0.04)  # then every step...
    assert cadence.wait(10.79) == pytest.approx(0.04)  # ...up to twice the expected time
    assert cadence.wait(10.81) > 0.04


def test_kinds_are_timed_apart_and_the_shortest_recent_time_counts():
    cadence = Cadence(step=0.04, longest=0.2)
    for kind, took in (("train", 0.3), ("query", 0.1), ("train", 0.9)):
        cadence.start(kind, 0.0)
        cadence.arrived(took)
    assert cadence.expected("train") == pytest.approx(0.3)  # one slow round does not count
    assert cadence.expected("query") == pytest.approx(0.1)
    assert cadence.expected("evaluate") is None
    for _ in range(REMEMBERED):  # the fast one is forgotten after as many slower ones
        cadence.start("train", 0.0)
        cadence.arrived(0.6)
    assert cadence.expected("train") == pytest.approx(0.6)


def test_an_answer_before_its_time_is_remembered_as_such():
    cadence = Cadence(step=0.04, longest=0.2, lead=0.6)
    cadence.start("train", 0.0)
    cadence.arrived(0.5)
    cadence.start("train", 5.0)
    cadence.arrived(5.1)  # the agent polled once right after its reply and found it
    assert cadence.expected("train") == pytest.approx(0.1)
    cadence.start("train", 9.0)
    assert cadence.wait(9.0) == pytest.approx(0.06)
