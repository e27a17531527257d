"""``benchmarks.deploy_trace``: a round's critical path from the server's and devices' steps."""

import pytest

from benchmarks.deploy_trace import PHASES, breakdown, format_breakdown, round_breakdown


def e(t, event, **fields):
    return {"t": t, "pid": 1, "event": event, **fields}


def plain_round(start, number, device_steps=True):
    """One plain round at ``start``: two devices; b's reply is the last the server pulls."""
    s = start
    events = [e(s, "round.start", round=number), e(s + 0.01, "server.push"),
              e(s + 0.10, "server.pushed", messages=[f"a{number}", f"b{number}"])]
    if device_steps:
        for name, late in (("a", 0.2), ("b", 0.0)):
            m = f"{name}{number}"
            events += [  # b pulls while the server still pushes (0.08 < 0.10)
                e(s + 0.08 + late, "agent.pulled", asked=s + 0.05 + late, message=m),
                e(s + 0.30 + late, "agent.received", message=m),
                e(s + 0.31 + late, "agent.decoded", message=m),
                e(s + 0.81 + late, "agent.handled", message=m),
                e(s + 0.82 + late, "agent.encoded", message=m),
                e(s + 1.00 + late, "agent.pushed", message=m)]
    events += [e(s + 1.05, "server.pulled", asked=s + 1.02, message=f"a{number}"),
               e(s + 1.40, "server.pulled", asked=s + 1.30, message=f"b{number}"),
               e(s + 1.40, "server.replies", missing=0),
               e(s + 1.45, "round.aggregated", round=number),
               e(s + 1.50, "round.evaluated", round=number),
               e(s + 1.60, "round.committed", round=number)]
    return events


def test_the_critical_path_adds_up_to_the_round():
    events = sorted(plain_round(0.0, 1) + plain_round(2.0, 2), key=lambda x: x["t"])
    phases = round_breakdown(events, 1)
    assert phases["round"] == pytest.approx(1.5)
    assert phases["exchanges"] == 1
    assert sum(phases[k] for k, _ in PHASES) == pytest.approx(phases["round"])
    expected = {"prepare": 0.01, "push": 0.09, "poll wait": 0.0, "pull call": 0.0,
                "objects in": 0.20, "decode": 0.01, "handler": 0.50, "encode": 0.01,
                "reply push": 0.18, "collect wait": 0.30, "collect pull": 0.10,
                "between": 0.05, "evaluate": 0.05, "commit": 0.10, "next start": 0.40}
    for key, seconds in expected.items():
        assert phases[key] == pytest.approx(seconds, abs=1e-9), key
    assert breakdown(events)["handler"] == pytest.approx(0.5)
    text = format_breakdown("plain lean", breakdown(events), 0.45)
    assert "handler" in text and "training" in text


def test_a_device_without_steps_is_one_round_trip():
    phases = round_breakdown(plain_round(0.0, 1, device_steps=False), 1)
    assert phases["device round trip"] == pytest.approx(1.2)  # pushed -> the pull that got b
    assert phases["handler"] == 0.0
    assert sum(phases[k] for k, _ in PHASES) == pytest.approx(phases["round"])


def test_a_round_missing_from_the_trace_is_none():
    assert round_breakdown(plain_round(0.0, 1), 2) is None
    assert breakdown([]) == {}
