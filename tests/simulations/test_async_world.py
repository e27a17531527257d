"""A simulated population under asynchronous training: every update's energy is accounted."""

from __future__ import annotations

import pytest

from simulations.clock import DROPPED
from tests.aggregator.test_asynchronous import run, scenario


def test_late_drop_outs_and_accepted_updates_keep_their_energy_and_device_class():
    data = scenario(rounds=6, population=True, mode="async", concurrency=8, buffer=2)
    data["population"]["dropout"] = 0.3
    result = run(data)
    clients = [c for r in result.rounds for c in r.clients]
    dropped = [c for c in clients if c.reason and DROPPED in c.reason]
    # some dropped while the model moved on: they trained from an older step than the one
    # that records them, and still drew energy until they dropped
    assert any(c.metrics["staleness"] >= 1 for c in dropped)
    assert dropped and all(c.metrics.get("energy_j", 0.0) > 0 for c in dropped)
    accepted = [c for c in clients if c.accepted]
    assert all(c.metrics["energy_j"] > 0 and c.metrics["sim_seconds"] > 0 for c in accepted)
    assert all(c.device_class for c in clients)
    for r in result.rounds:
        spent = sum(c.metrics.get("energy_j", 0.0) for c in r.clients)
        assert r.metrics["energy_j"] == pytest.approx(spent, rel=1e-12)
