"""A device whose data does not fit the run: it says so in one line, the server names the
rejection, and the run goes on with the other device (real processes on loopback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregator.store import Store
from tests.deploy.fleet import example, loopback_address, needs_flower

pytestmark = [pytest.mark.slow, needs_flower]


def test_a_misfit_device_is_named_on_both_sides(fleet, tmp_path):
    bad = tmp_path / "images.npz"  # 28x28 images for a model of 8x8 digits
    np.savez(bad, x=np.zeros((50, 28, 28), np.float32), y=np.zeros(50, np.int64))
    scenario = tmp_path / "one.toml"
    scenario.write_text(example(rounds=1))
    address = loopback_address()
    db = tmp_path / "runs.db"
    server = fleet.server(
        "server", scenario, address, db, "--connect-timeout", "90", "--round-timeout", "60"
    )
    fleet.device("good", address, "--max-wait", "2", "--dataset", "digits", "--partition-id", "0")
    misfit = fleet.device(
        "bad", address, "--max-wait", "2", "--data", str(bad), "--logs", str(tmp_path / "bad-logs")
    )
    assert server.wait(timeout=180) == 0, fleet.output("server")

    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed"
    (row,) = Store(str(db)).get_run(summary["run_id"]).rounds
    rejected = [c for c in row.clients if not c.accepted]
    assert len(rejected) == 1 and row.num_accepted == 1
    expected = "data check: model 'logreg': each example has shape (28, 28)"
    assert expected in rejected[0].reason
    assert f"client {rejected[0].client_id} rejected:" in fleet.output("server")
    assert misfit.wait(timeout=60) == 0
    assert f"this device's data does not fit the run: {expected}" in fleet.output("bad")
