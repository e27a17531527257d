"""SecAgg+ inside the real round loop, on the in-process Flower grid, with a toy ClientApp."""

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from aggregator.backend import select_backend
from aggregator.collect.secagg import SecAggAborted
from aggregator.round_types import SECAGG_CLIP
from aggregator.rounds import FederationConfig, RoundFailed, run_federation
from aggregator.secagg import SecAggConfig
from aggregator.strategies import StrategyContext, build_strategy
from client_runtime.app import partition_id
from client_runtime.secagg import ClientState
from client_runtime.secagg_app import STATE_RECORD, TrainOutput, register_secagg
from fedcore import protocol
from fedcore.secagg.fixedpoint import FixedPoint
from fedcore.settings import TrainSettings
from fedcore.wire import read_vector, vector_record
from simulations.runtimes.inprocess import InProcessGrid
from tests.aggregator.conftest import BACKENDS, querying_app

SIZE = 300


def shift(k):
    return np.float32(0.01 * (k + 1))


def toy_app(log=None, authority=None):
    """Client k adds 0.01 (k + 1) to the global vector, with weight k + 1 and loss k / 10;
    with ``authority`` (a ``SimulatedAuthority``) each client holds an identity."""
    app = querying_app()

    def local(msg, context):
        k = partition_id(context)
        base = read_vector(msg.content.array_records[protocol.GLOBAL])
        return TrainOutput(base + shift(k), k + 1, k / 10, 0.0)

    @app.train()
    def train(msg, context):
        out = local(msg, context)
        metrics = {"num_examples": out.num_examples, "train_loss": out.loss, "seconds": 0.0}
        content = RecordDict(
            {protocol.UPDATE: vector_record(out.params), protocol.METRICS: MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    credentials = (lambda c: authority.credentials(partition_id(c))) if authority else None
    register_secagg(app, local, credentials)
    if log is None:
        return app

    def logged(msg, context):  # keep what each client sent, and its secrets at that moment
        reply = app(msg, context)
        record = context.state.config_records.get(STATE_RECORD)
        state = ClientState.from_bytes(record["state"]) if record else None
        log.append((partition_id(context), msg.metadata.message_type, reply, state))
        return reply

    return logged


class DroppingGrid(InProcessGrid):
    """Nodes in ``drop[message_type]`` never answer messages of that type (they vanish)."""

    def __init__(self, app, num_nodes, drop):
        super().__init__(app, num_nodes)
        self.drop = drop
        self.partition = {self.node_id(i): i for i in range(num_nodes)}

    def send_and_receive(self, messages, *, timeout=None):
        def vanishes(m):
            meta = m.metadata
            return self.partition[meta.dst_node_id] in self.drop.get(meta.message_type, ())

        return super().send_and_receive([m for m in messages if not vanishes(m)], timeout=timeout)


def run(app, nodes=8, rounds=1, secagg=None, strategy="fedavg", grid=None, device="cpu"):
    train = protocol.TrainInstructions(0, protocol.ModelSpec("toy"), TrainSettings(batch_size=1), 0)
    config = FederationConfig(rounds, nodes, train, seed=3, secagg=secagg)
    outcomes = []
    final = run_federation(
        grid or InProcessGrid(app, nodes),
        config,
        np.zeros(SIZE, np.float32),
        build_strategy(strategy, context=StrategyContext(backend=select_backend(device))),
        lambda p: (0.0, 0.0),
        outcomes.append,
    )
    return final, outcomes


def expected_mean(clients, max_weight=8.0, n=8):
    enc = FixedPoint.for_round(n, SecAggConfig.clip, max_weight)
    w = np.array([enc.weight_units(k + 1) for k in clients], np.float64)
    value = sum(float(shift(k)) * wk for k, wk in zip(clients, w, strict=True)) / w.sum()
    return value, enc.error_bound(n, w.sum())


@pytest.mark.parametrize("device", BACKENDS)  # numpy and array-api-strict backends
def test_secure_fedavg_matches_plain_fedavg(device):
    plain, plain_outcomes = run(toy_app(), rounds=2)
    secure, outcomes = run(toy_app(), rounds=2, secagg=SecAggConfig(max_weight=8), device=device)
    value, bound = expected_mean(range(8))
    np.testing.assert_allclose(secure, 2 * value, atol=2 * bound)
    np.testing.assert_allclose(secure, plain, atol=1e-6)
    assert outcomes[-1].num_accepted == 8
    assert outcomes[-1].train_loss == pytest.approx(plain_outcomes[-1].train_loss, abs=1e-6)
    # validated by the clip every client applied, not by the guard: the round says so
    assert all(o.metrics == {SECAGG_CLIP: SecAggConfig.clip} for o in outcomes)
    assert all(SECAGG_CLIP not in o.metrics for o in plain_outcomes)
    assert all(c.bytes_up < 1.1 * 4 * SIZE + 3000 for c in outcomes[-1].clients)


@pytest.mark.parametrize(
    "message_type",
    ["query.secagg_advertise", "query.secagg_share", "train.secagg_masked", "query.secagg_unmask"],
)
def test_dropouts_at_each_stage(message_type):
    grid = DroppingGrid(toy_app(), 8, {message_type: {1, 6}})
    final, outcomes = run(None, grid=grid, secagg=SecAggConfig(t=4, max_weight=8))
    summed = [k for k in range(8) if message_type == "query.secagg_unmask" or k not in (1, 6)]
    value, bound = expected_mean(summed)
    np.testing.assert_allclose(final, value, atol=bound)
    rejected = {c.client_id: c.reason for c in outcomes[0].clients if not c.accepted}
    assert set(rejected) == ({1, 6} if len(summed) == 6 else set())
    assert all("no reply" in reason for reason in rejected.values())


def test_too_many_dropouts_abort_the_round_clearly():
    grid = DroppingGrid(toy_app(), 8, {"train.secagg_masked": {0, 1, 2, 3, 4}})
    with pytest.raises(SecAggAborted, match="3 of 8 clients left, threshold t = 6"):
        run(None, grid=grid, secagg=SecAggConfig(t=6))


def test_no_key_seed_or_plain_update_reaches_the_server():
    log = []
    run(toy_app(log), secagg=SecAggConfig(max_weight=8))
    secrets, sent = set(), []
    for _, _, reply, state in log:
        if state is not None:
            secrets |= {s for s in (state.c_sk, state.s_sk, state.seed, *state.share_keys) if s}
        content = reply.content
        for record in content.array_records.values():
            sent += [bytes(a.data) for a in record.values()]
        for record in content.config_records.values():
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                sent += [v for v in items if isinstance(v, bytes)]
    assert len(secrets) > 8 * 3
    enc = FixedPoint.for_round(8, SecAggConfig.clip, 8)
    plain = [np.full(64, shift(k), np.float32).tobytes() for k in range(8)]
    for k in range(8):
        plain.append(enc.encode(np.full(64, shift(k), np.float32), k + 1, 0)[:60].tobytes())
    blob = b"|".join(sent)
    assert not any(secret in blob for secret in secrets)
    assert not any(p in blob for p in plain)
    masked_types = {t for _, t, r, _ in log if "secagg_masked" in r.content.array_records}
    assert masked_types == {"train.secagg_masked"}


def test_strategies_that_need_individual_updates_are_refused():
    with pytest.raises(RoundFailed, match="needs individual updates"):
        run(toy_app(), secagg=SecAggConfig(), strategy="fedmedian")


def test_keys_are_advertised_ahead_and_a_client_that_lost_them_rejoins():
    log = []
    grid = InProcessGrid(toy_app(log), 8)
    node = grid.node_id(5)
    train = protocol.TrainInstructions(0, protocol.ModelSpec("toy"), TrainSettings(batch_size=1), 0)
    config = FederationConfig(4, 8, train, seed=3, secagg=SecAggConfig(t=4, max_weight=8))
    outcomes = []

    def on_round(outcome):
        outcomes.append(outcome)
        if outcome.number == 2:  # client 5 restarts and forgets its advertised keys
            grid.context(node).state.config_records.pop(STATE_RECORD)
        log.append(("end", outcome.number, None, None))

    strategy = build_strategy("fedavg")
    run_federation(grid, config, np.zeros(SIZE, np.float32), strategy, lambda p: (0, 0), on_round)
    rounds = [[]]
    for k, kind, _, _ in log:
        if k == "end":
            rounds.append([])
        else:
            rounds[-1].append(kind)
    advertised = [sum(kind == "query.secagg_advertise" for kind in r) for r in rounds[:4]]
    assert advertised == [8, 0, 0, 1]  # all at first, then only the client that lost its keys
    lost = {c.client_id: c.reason for c in outcomes[2].clients if not c.accepted}
    assert list(lost) == [5] and "key slot" in lost[5]
    assert outcomes[3].num_accepted == 8


def test_identities_in_the_round_loop_give_the_bit_identical_model():
    from aggregator.secagg.keybook import Identities
    from fedcore.secagg.identity import SimulatedAuthority

    authority = SimulatedAuthority.create()
    plain, _ = run(toy_app(), rounds=2, secagg=SecAggConfig(max_weight=8))
    log = []
    settings = SecAggConfig(max_weight=8, identities=Identities(authority.authority()))
    checked, outcomes = run(toy_app(log, authority), rounds=2, secagg=settings)
    assert checked.tobytes() == plain.tobytes()
    assert outcomes[-1].num_accepted == 8
    assert sum(kind == "query.secagg_check" for _, kind, _, _ in log) == 16


def test_a_device_with_an_identity_refuses_a_server_without_the_checks():
    from fedcore.secagg.identity import SimulatedAuthority

    app = toy_app(authority=SimulatedAuthority.create())
    with pytest.raises(SecAggAborted, match="identity-checked"):
        run(app, secagg=SecAggConfig(max_weight=8))
