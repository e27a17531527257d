"""Asynchronous training through the deployed ServerApp: a slow device does not hold the others.

The deployed apps (``deploy.serverapp``, ``deploy.clientapp``) run over an in-process grid
whose replies from one node are held back for a number of polls, as a slow phone's would be:
the server only sees Flower's push/pull interface (no simulated clock), so this is the path a
real SuperLink takes (``aggregator.asynchronous.LiveCourier``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from unittest import mock

import numpy as np
from flwr.app import Context, Message, RecordDict

from aggregator.store import Store
from deploy import clientapp, serverapp
from deploy.settings import DeploySettings
from simulations.runtimes.inprocess import InProcessGrid
from tests.deploy.fleet import example


class SlowNodeGrid(InProcessGrid):
    """Train replies from ``slow_node`` come back only after ``hold`` further polls."""

    def __init__(self, *args, slow_node: int, hold: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slow_node, self.hold = slow_node, hold
        self.held: dict[str, list] = {}  # message id -> [reply, polls left]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        out = []
        for reply in super().pull_messages(i for i in ids if i not in self.held):
            slow = reply.metadata.src_node_id == self.slow_node
            if slow and reply.metadata.message_type == "train":
                self.held[reply.metadata.reply_to_message_id] = [reply, self.hold]
            else:
                out.append(reply)
        for message_id in [i for i in ids if i in self.held]:
            entry = self.held[message_id]
            entry[1] -= 1
            if entry[1] < 0:
                out.append(self.held.pop(message_id)[0])
        return out


def test_a_slow_device_does_not_stop_the_model_and_counts_when_it_returns(tmp_path):
    scenario = example(
        num_clients=4, clients_per_round=4, rounds=5, mode="async", concurrency=4, buffer=2,
        max_staleness=3,
    )
    assert 'mode = "async"' in scenario
    scenario += "\n[evaluation]\nevery = 2\nlocal_test = 0.25\n"
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    settings = DeploySettings(scenario=scenario, db=db, connect_timeout=5)
    nodes = [{"dataset": "digits", "partition-id": i, "num-partitions": 4} for i in range(4)]
    probe = InProcessGrid(clientapp.app, 4, node_config=nodes.__getitem__)
    slow = probe.node_id(0)
    grid = SlowNodeGrid(clientapp.app, 4, node_config=nodes.__getitem__, slow_node=slow, hold=2)
    run_config = settings.run_config()
    for i in range(4):
        grid.context(grid.node_id(i)).run_config = run_config
    with mock.patch.dict(os.environ, settings.environment()):
        serverapp.app(grid, Context(grid.run.run_id, 0, {}, RecordDict(), run_config))

    [run] = Store(db).list_runs()
    assert run.status == "completed" and [r.number for r in run.rounds] == [1, 2, 3, 4, 5]
    store = Store(db)
    clients = [store.get_round(run.id, n).clients for n in range(1, 6)]
    first_two = {c.client_id for step in clients[:2] for c in step}
    assert 0 not in first_two  # the others moved the model on without the slow device
    late = [c for step in clients for c in step if c.client_id == 0]
    assert late, "the slow device's update never arrived"
    assert any(c.accepted and c.metrics.get("staleness", 0) >= 1 for c in late)
    # the clients' evaluation of steps 2, 4 and 5, by devices idle then (never one held back)
    evaluations = {n: store.get_round(run.id, n).evaluation for n in range(1, 6)}
    assert [n for n, e in evaluations.items() if e] == [2, 4, 5]
    assert all(e["clients"] and not e["rejected"] for e in evaluations.values() if e)


def test_a_paused_async_deployment_resumes_its_in_flight_clients_bit_for_bit(tmp_path):
    """The deployed ServerApp hands the checkpoint's server state to the round loop as the
    simulation does: the clients in flight at the pause are sent again from the model version
    they trained from, so the resumed run ends where the uninterrupted one does."""
    from simulations.lifecycle import StoredRun
    from simulations.prepare import prepare_scenario
    from tests.deploy.test_apps import deploy_in_process, digits_nodes

    scenario = example(
        num_clients=4, clients_per_round=4, rounds=5, mode="async", concurrency=4, buffer=2,
        max_staleness=3,
    )

    def final(store: Store, run_id: int):
        return store.load_checkpoint(run_id)[1].params

    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    deploy_in_process(DeploySettings(scenario=scenario, db=whole, connect_timeout=5),
                      digits_nodes(4))  # fmt: skip
    db = f"sqlite:///{tmp_path / 'paused.db'}"
    store = Store(db)
    prepared = prepare_scenario(serverapp.load_deployable(scenario))
    run_id = StoredRun.create(store, prepared, serverapp.RUNTIME).run_id
    settings = DeploySettings(scenario=scenario, db=db, run_id=run_id, connect_timeout=5)

    def pause_after_step_2(outcome):
        if outcome.number == 2:
            store.queue_control(run_id, "pause")

    with mock.patch.object(serverapp, "log_round", pause_after_step_2):
        deploy_in_process(settings, digits_nodes(4))
    assert [r.number for r in store.get_run(run_id).rounds] == [1, 2]
    store.claim_run(run_id, serverapp.RUNTIME)  # what `fedcore server --resume` does
    deploy_in_process(settings, digits_nodes(4))
    assert store.get_run(run_id).status == "completed"
    np.testing.assert_array_equal(final(store, run_id), final(Store(whole), 1))
