"""The connect and round timeouts of a deployed run, and what stops its wait for devices.

No clock is raced: a grid that never gains enough nodes, or whose node never replies, shows
what the loop does once the timeout has passed; the timeouts the operator set must be the ones
that reach the grid.
"""

from __future__ import annotations

import os
from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from aggregator.rounds import RoundFailed, StopRun
from aggregator.store import Store
from deploy import clientapp, serverapp
from deploy.settings import DeploySettings
from simulations.lifecycle import StoredRun, StoreHooks
from simulations.prepare import prepare_scenario
from simulations.runtimes.inprocess import InProcessGrid
from simulations.scenario import load_scenario
from tests.deploy.fleet import EXAMPLE


class Recording(InProcessGrid):
    """Digits nodes on the in-process grid; records the timeout of every exchange and, with
    ``silent``, drops that node's train replies (as a SuperLink returns what came in time)."""

    def __init__(self, run_config: dict, nodes: int = 2, silent: int | None = None) -> None:
        configs = [{"dataset": "digits", "partition-id": i, "num-partitions": nodes}
                   for i in range(nodes)]  # fmt: skip
        super().__init__(clientapp.app, nodes, node_config=configs.__getitem__)
        for i in range(nodes):
            self.context(self.node_id(i)).run_config = run_config
        self.silent = None if silent is None else self.node_id(silent)
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        return [
            m for m in replies
            if not (m.metadata.src_node_id == self.silent and m.metadata.message_type == "train")
        ]  # fmt: skip


class Empty(Recording):
    """A SuperLink no device ever joins."""

    def get_node_ids(self):
        return []


def deploy(grid: InProcessGrid, settings: DeploySettings):
    """As a SuperLink runs the ServerApp: the run config for all, the store in its environment."""
    with mock.patch.dict(os.environ, settings.environment()):
        serverapp.app(grid, Context(1, 0, {}, RecordDict(), settings.run_config()))


def test_the_round_timeout_reaches_the_grid_and_a_silent_device_is_rejected(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    text = EXAMPLE.read_text().replace("num_clients = 2", "num_clients = 3")
    text = text.replace("clients_per_round = 2", "clients_per_round = 3")  # all, every round
    settings = DeploySettings(scenario=text, db=db, connect_timeout=5, round_timeout=7.5)
    grid = Recording(settings.run_config(), nodes=3, silent=1)
    deploy(grid, settings)
    assert grid.timeouts and set(grid.timeouts) == {7.5}
    [run] = Store(db).list_runs()
    run = Store(db).get_run(run.id)
    assert run.status == "completed"
    for r in run.rounds:  # the silent device is rejected for its silence; the round goes on
        [silent] = [c for c in r.clients if int(c.node_id) == grid.silent]
        assert not silent.accepted and silent.reason == "no reply before the timeout"
        assert r.num_selected == 3 and r.num_accepted == 2


def test_no_round_timeout_means_waiting_without_a_limit(tmp_path):
    settings = DeploySettings(scenario=EXAMPLE.read_text(), connect_timeout=5, round_timeout=None)
    assert DeploySettings.of(settings.run_config()).round_timeout is None
    grid = Recording(settings.run_config())
    deploy(grid, settings)
    assert grid.timeouts and set(grid.timeouts) == {None}


def test_the_connect_timeout_fails_the_run_naming_what_connected(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    settings = DeploySettings(scenario=EXAMPLE.read_text(), db=db, connect_timeout=0.6)
    with pytest.raises(RoundFailed, match=r"only 0 of the 2 nodes needed connected within 0.6 s"):
        deploy(Empty(settings.run_config()), settings)
    [run] = Store(db).list_runs()
    assert run.status == "failed" and "within 0.6 s" in run.error


@pytest.mark.parametrize("command", ["pause", "abort"])
def test_a_pause_or_abort_stops_the_wait_for_devices(tmp_path, command):
    """``fedcore runs pause`` (or an interrupted ``fedcore server``) while no device has come:
    the run stops now, not after the connect timeout (an hour here)."""
    store = Store(str(tmp_path / "runs.db"))
    prepared = prepare_scenario(load_scenario(EXAMPLE))
    run_id = StoredRun.create(store, prepared, serverapp.RUNTIME).run_id
    store.queue_control(run_id, command)
    hooks = StoreHooks(store, run_id, None)
    config = replace(prepared.config, connect_timeout=3600.0)
    with pytest.raises(StopRun, match=f"{command}e?d before round 1") as stop:
        serverapp._await_devices(Empty({}), config, hooks, 1)
    assert stop.value.status == ("paused" if command == "pause" else "aborted")


def test_devices_that_connect_leave_the_rest_of_the_connect_timeout(tmp_path):
    store = Store(str(tmp_path / "runs.db"))
    prepared = prepare_scenario(load_scenario(EXAMPLE))
    run_id = StoredRun.create(store, prepared, serverapp.RUNTIME).run_id
    grid = Recording({})
    config = serverapp._await_devices(grid, prepared.config, StoreHooks(store, run_id, None), 1)
    assert 0 < config.connect_timeout <= prepared.config.connect_timeout
    assert np.isfinite(config.connect_timeout)
