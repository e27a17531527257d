"""A device whose data does not fit the run: it says so in one line, the server names the
rejection, and the run goes on with the other device (real processes on loopback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggregator.store import Store
from deploy.processes import free_port
from tests.deploy.test_end_to_end import EXAMPLE, Fleet

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    left = fleet.stop_all()
    assert not left, f"processes left behind: {left}"


def test_a_misfit_device_is_named_on_both_sides(fleet, tmp_path):
    bad = tmp_path / "images.npz"  # 28x28 images for a model of 8x8 digits
    np.savez(bad, x=np.zeros((50, 28, 28), np.float32), y=np.zeros(50, np.int64))
    scenario = tmp_path / "one.toml"
    scenario.write_text(EXAMPLE.read_text().replace("rounds = 2", "rounds = 1"))
    address = f"127.0.0.1:{free_port()}"
    db = tmp_path / "runs.db"
    server = fleet.start(
        "server", "server", str(scenario), "--address", address, "--db", str(db), "--json",
        "--connect-timeout", "90", "--round-timeout", "60",
    )  # fmt: skip
    fleet.wait_for("server", "waiting for 2 device(s)", server, timeout=60)
    common = ("client", "--superlink", address, "--max-wait", "2")
    fleet.start("good", *common, "--dataset", "digits", "--partition-id", "0")
    misfit = fleet.start("bad", *common, "--data", str(bad), "--logs", str(tmp_path / "bad-logs"))
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
