"""The round loop against a toy ClientApp on the in-process grid (no engine involved)."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from aggregator.rounds import (
    FederationConfig,
    RoundFailed,
    client_seed,
    discover_clients,
    run_federation,
    sample_clients,
)
from aggregator.strategies import build_strategy
from client_runtime.app import partition_id
from fedcore import protocol
from fedcore.settings import TrainSettings
from fedcore.wire import read_vector, vector_record
from simulations.runtimes.inprocess import InProcessGrid
from tests.aggregator.conftest import querying_app

SIZE = 8


def toy_app(bad_clients: dict[int, str] | None = None) -> ClientApp:
    """Client k returns global + k with weight k + 1; some clients misbehave on request."""
    bad_clients = bad_clients or {}
    app = querying_app()

    @app.train()
    def train(msg, context):
        k = partition_id(context)
        mode = bad_clients.get(k)
        if mode == "raise":
            raise RuntimeError("device out of memory")
        vector = read_vector(msg.content.array_records[protocol.GLOBAL]) + np.float32(k)
        if mode == "nan":
            vector[0] = np.nan
        if mode == "shape":
            vector = vector[:-1]
        if mode == "float64":
            vector = vector.astype(np.float64)
        if mode == "oversized":
            vector = np.zeros(4096, np.float32)
        if mode == "inf":
            vector[-1] = np.inf
        if mode == "scaled":
            vector = vector * np.float32(1e6)
        metrics = MetricRecord({"num_examples": k + 1, "train_loss": float(k), "seconds": 0.0})
        content = RecordDict({protocol.UPDATE: vector_record(vector), protocol.METRICS: metrics})
        if mode == "no_metrics":
            del content[protocol.METRICS]
        if mode == "no_update":
            del content[protocol.UPDATE]
        return Message(content, reply_to=msg)

    return app


def config(rounds=2, per_round=4, seed=7):
    spec = protocol.ModelSpec("toy")
    train = protocol.TrainInstructions(0, spec, TrainSettings(batch_size=1), 0)
    return FederationConfig(rounds, per_round, train, seed)


class TwiceGrid(InProcessGrid):
    """A grid on which the first client's reply arrives twice."""

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        return [*replies, replies[-1]]


def run(app, num_nodes=6, grid=InProcessGrid, **kwargs):
    outcomes = []
    final = run_federation(
        grid(app, num_nodes),
        config(**kwargs),
        np.zeros(SIZE, np.float32),
        build_strategy("fedavg"),
        evaluate_fn=lambda p: (float(p.sum()), 0.5),
        on_round=outcomes.append,
    )
    return final, outcomes


def test_fedavg_round_is_the_example_weighted_mean():
    final, outcomes = run(toy_app(), rounds=1, per_round=6)
    # clients 0..5 add k with weight k+1: mean shift = sum(k(k+1)) / sum(k+1) = 70/21
    np.testing.assert_allclose(final, np.full(SIZE, 70 / 21, np.float32), rtol=1e-6)
    assert outcomes[0].num_accepted == 6
    assert [c.client_id for c in outcomes[0].clients] == list(range(6))


def test_bad_updates_are_rejected_with_reasons_and_the_round_goes_on():
    bad = {0: "raise", 1: "nan", 2: "shape", 3: "float64"}
    final, outcomes = run(toy_app(bad), rounds=1, per_round=6)
    reasons = {c.client_id: c.reason for c in outcomes[0].clients if not c.accepted}
    assert set(reasons) == {0, 1, 2, 3}
    assert "device out of memory" in reasons[0]
    assert "non-finite" in reasons[1]
    assert "shape" in reasons[2]
    assert "dtype" in reasons[3]
    # only clients 4 and 5 count: (4*5 + 5*6) / (5 + 6)
    np.testing.assert_allclose(final, np.full(SIZE, 50 / 11, np.float32), rtol=1e-6)


def test_a_round_with_no_accepted_update_fails_clearly():
    with pytest.raises(RoundFailed, match="no update was accepted"):
        run(toy_app({k: "nan" for k in range(3)}), num_nodes=3, rounds=1, per_round=3)


def test_same_seed_same_rounds():
    a, outcomes_a = run(toy_app(), rounds=3, per_round=3, seed=1)
    b, outcomes_b = run(toy_app(), rounds=3, per_round=3, seed=1)
    np.testing.assert_array_equal(a, b)
    chosen = [[c.client_id for c in o.clients] for o in outcomes_a]
    assert chosen == [[c.client_id for c in o.clients] for o in outcomes_b]


def test_sampling_and_seeds():
    assert sample_clients(range(10), 4, 3, 1) == sample_clients(range(10), 4, 3, 1)
    assert len(set(sample_clients(range(10), 10, 3, 1))) == 10
    with pytest.raises(RoundFailed, match="needs 11 clients"):
        sample_clients(range(10), 11, 3, 1)
    assert client_seed(1, 2, 3) == client_seed(1, 2, 3) != client_seed(1, 2, 4)


def test_every_kind_of_bad_reply_is_rejected_and_nothing_accumulated_is_lost():
    bad = {0: "no_metrics", 1: "no_update", 2: "oversized", 3: "inf", 4: "scaled"}
    final, outcomes = run(toy_app(bad), num_nodes=9, grid=TwiceGrid, rounds=1, per_round=9)
    clients = outcomes[0].clients
    reasons = {c.client_id: c.reason for c in clients if not c.accepted and c.client_id < 5}
    assert "metric record" in reasons[0]
    assert "array record" in reasons[1]
    assert "oversized" in reasons[2]
    assert "non-finite" in reasons[3]
    assert "median norm" in reasons[4]
    duplicates = [c for c in clients if c.reason and "duplicate" in c.reason]
    assert len(duplicates) == 1 and outcomes[0].num_selected == 9
    assert outcomes[0].num_accepted == 4  # clients 5..8, each counted once
    expected = sum(k * (k + 1) for k in range(5, 9)) / sum(k + 1 for k in range(5, 9))
    np.testing.assert_allclose(final, np.full(SIZE, expected, np.float32), rtol=1e-6)
    assert all(c.bytes_down == SIZE * 4 + 128 for c in clients)
    assert all(c.bytes_up > 0 for c in clients if c.accepted)


def test_two_nodes_claiming_one_client_keep_the_lower_node_id():
    twins = {0: 0, 1: 0, 2: 1}  # partitions 0 and 1 both say they are client 0
    grid = InProcessGrid(toy_app(), 3, node_config=lambda i: {protocol.PARTITION_ID: twins[i]})
    nodes = list(grid.get_node_ids())
    assert discover_clients(grid, nodes) == {0: min(nodes[0], nodes[1]), 1: nodes[2]}
