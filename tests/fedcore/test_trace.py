"""``fedcore.trace``: nothing without FEDCORE_TRACE; one JSON line per step with it."""

import json

from fedcore import trace


def test_nothing_is_written_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(trace.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    trace.event("round.start", round=1)
    assert not trace.enabled() and list(tmp_path.iterdir()) == []


def test_steps_are_appended_and_read_back_in_time_order(monkeypatch, tmp_path):
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(trace.ENV, str(path))
    trace.event("agent.pushed", at=20.0, message="b")
    trace.event("agent.pulled", at=10.0, message="a", asked=9.5)
    with path.open("a") as handle:
        handle.write("not json\n[1, 2]\n")  # skipped, as a torn or foreign line would be
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["event"] == "agent.pushed"
    events = trace.read(path)
    assert [(e["event"], e["t"], e["message"]) for e in events] == [
        ("agent.pulled", 10.0, "a"), ("agent.pushed", 20.0, "b")]
    assert events[0]["asked"] == 9.5 and isinstance(events[0]["pid"], int)


def test_an_unwritable_trace_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv(trace.ENV, str(tmp_path / "missing" / "trace.jsonl"))
    trace.event("round.start", round=1)  # no folder: nothing written, nothing raised
