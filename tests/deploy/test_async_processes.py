"""Asynchronous training on a real deployment: ``fedcore server`` and three ``fedcore client``
devices as separate processes on loopback, one of them slow.

Device 0 starts its first training only when the test lets it (``FEDCORE_TEST_HOLD_TRAINING``,
see ``deploy.node``), so its slowness does not depend on timing: the test waits until the
other two devices have moved the model on by two server steps, lets device 0 go, waits for its
late update to be recorded, then aborts the run (``rounds`` is set far out). The late update is
recorded with its staleness and counted; the idle devices evaluated the model meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from aggregator.store import Store
from cli.errors import STOPPED
from deploy.node import HOLD_TRAINING
from tests.deploy.fleet import Fleet, example, loopback_address, needs_flower
from tests.simulations.run_watch import committed

pytestmark = [pytest.mark.slow, needs_flower]  # real SuperLink and SuperNode processes

SLOW = 0  # the held device's partition (its client id)


def client_rows(db: Path, client_id: int) -> list[tuple[int, int]]:
    """``(step, accepted)`` of each stored result of ``client_id`` (read-only, live store)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(
                "SELECT r.number, c.accepted FROM client_results c JOIN rounds r "
                "ON c.round_id = r.id WHERE c.client_id = ? ORDER BY r.number", (client_id,)
            ).fetchall()
    except sqlite3.Error:
        return []


def wait_until(predicate, server, timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert server.poll() is None, f"the server exited early:\n{fleet.output('server')}"
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)


def test_a_slow_device_returns_late_with_its_staleness_while_the_others_move_on(
        fleet, tmp_path):
    text = example(num_clients=3, clients_per_round=3, rounds=40, mode="async", concurrency=3,
                   buffer=2)  # fmt: skip
    scenario = tmp_path / "async.toml"
    scenario.write_text(text + "\n[evaluation]\nevery = 2\nlocal_test = 0.25\n")
    db = tmp_path / "runs.db"
    gate = tmp_path / "let-device-0-train"
    address = loopback_address()
    server = fleet.server(
        "server", scenario, address, db, "--connect-timeout", "90", "--round-timeout", "300",
        devices=3,
    )  # fmt: skip
    for i in range(3):
        fleet.device(
            f"client{i}", address, "--dataset", "digits", "--partition-id", str(i),
            "--num-partitions", "3", "--max-wait", "2",
            env={HOLD_TRAINING: str(gate)} if i == SLOW else None,
        )  # fmt: skip

    wait_until(lambda: committed(db)[1] >= 2, server, 240, "two server steps", fleet)
    assert client_rows(db, SLOW) == []  # the others moved the model on without it
    gate.touch()
    wait_until(lambda: client_rows(db, SLOW), server, 240, "device 0's late update", fleet)
    Store(str(db)).queue_control(1, "abort")
    assert server.wait(timeout=180) == STOPPED, fleet.output("server")
    assert "run 1 aborted" in fleet.output("server")

    run = Store(str(db)).get_run(1)
    assert run.status == "aborted"
    steps = list(run.rounds)
    slow = [(r.number, c) for r in steps for c in r.clients if c.client_id == SLOW]
    first_step, late = slow[0]
    assert first_step >= 3 and len(steps) > len(slow)
    assert all({c.client_id for c in r.clients} == {1, 2} for r in steps[: first_step - 1])
    # it trained from the initial model (version 0) and arrived after step 2 or later
    assert late.accepted and late.metrics["staleness"] == first_step - 1 >= 2
    assert late.metrics["staleness_weight"] == pytest.approx(first_step ** -0.5)
    evaluated = [r for r in steps if r.evaluation]
    assert [r.number for r in evaluated] == [n for n in range(2, len(steps) + 1, 2)]
    for r in evaluated:
        clients = [c[0] for c in r.evaluation["clients"]]
        assert clients and not r.evaluation["rejected"]
        if r.number < first_step:
            assert SLOW not in clients  # it was training then: not asked to evaluate
