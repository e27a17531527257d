"""Parity with Flower: the same replies give the same next global model (1e-6 relative).

FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg, Krum, MultiKrum,
Bulyan and QFedAvg.

Each case feeds identical hand-built reply messages to Flower's ``aggregate_train`` and to
our composition (on numpy and on array-api-strict), for three rounds so that server-optimizer
state (momentum, Adam moments) is compared too.
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.fedopt import FedOpt

from aggregator.backend import select_backend
from aggregator.decode import decode_reply
from aggregator.strategies import StrategyContext, build_strategy
from fedcore.wire import VECTOR_KEY
from tests.aggregator.conftest import client_vectors, reply

SIZE, CLIENTS, ROUNDS = 2_000, 7, 3
KEY = "num_examples"

CASES = {
    "fedavg": (lambda: fl.FedAvg(weighted_by_key=KEY), {}),
    "fedavgm": (
        lambda: fl.FedAvgM(weighted_by_key=KEY, server_learning_rate=0.7, server_momentum=0.9),
        {"server_learning_rate": 0.7, "server_momentum": 0.9},
    ),
    "fedadam": (
        lambda: fl.FedAdam(weighted_by_key=KEY, eta=0.05, beta_1=0.8, beta_2=0.95, tau=1e-2),
        {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
    ),
    "fedyogi": (
        lambda: fl.FedYogi(weighted_by_key=KEY, eta=0.05, tau=1e-2),
        {"eta": 0.05, "tau": 1e-2},
    ),
    "fedadagrad": (
        lambda: fl.FedAdagrad(weighted_by_key=KEY, eta=0.05, tau=1e-2),
        {"eta": 0.05, "tau": 1e-2},
    ),
    "fedmedian": (lambda: fl.FedMedian(weighted_by_key=KEY), {}),
    "fedtrimmedavg": (lambda: fl.FedTrimmedAvg(weighted_by_key=KEY, beta=0.2), {"beta": 0.2}),
    "krum": (lambda: fl.Krum(weighted_by_key=KEY, num_malicious_nodes=1), {"num_malicious": 1}),
    "multikrum": (
        lambda: fl.MultiKrum(weighted_by_key=KEY, num_malicious_nodes=1, num_nodes_to_select=3),
        {"num_malicious": 1, "select": 3},
    ),
    "bulyan": (lambda: fl.Bulyan(weighted_by_key=KEY, num_malicious_nodes=1), {"num_malicious": 1}),
    "qfedavg": (
        lambda: fl.QFedAvg(client_learning_rate=0.1, q=0.2, weighted_by_key=KEY),
        {"q": 0.2, "client_learning_rate": 0.1},
    ),
}


LONG = ("qfedavg", "bulyan")  # Flower's side takes 10-25 s on 2 busy cores: the slow subset


def _set_current(flower, global_vector):
    """What Flower's ``configure_train`` would remember (it needs a grid to be called)."""
    if isinstance(flower, FedOpt):
        flower.current_arrays = {VECTOR_KEY: global_vector.copy()}
    elif isinstance(flower, fl.QFedAvg):
        flower.current_arrays = ArrayRecord({VECTOR_KEY: Array(global_vector.copy())})
    elif isinstance(flower, fl.FedAvgM) and flower.current_arrays is None:
        flower.current_arrays = ArrayRecord({VECTOR_KEY: Array(global_vector.copy())})


@pytest.mark.parametrize("device", ["cpu", "strict"])
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in LONG else n for n in sorted(CASES)],
)
def test_same_next_global_model_as_flower(name, device):
    make_flower, options = CASES[name]
    flower = make_flower()
    ours = build_strategy(
        name,
        {**options, "max_norm_factor": 0.0},
        StrategyContext(
            num_clients=CLIENTS, clients_per_round=CLIENTS, backend=select_backend(device)
        ),
    )
    rng = np.random.default_rng(1)
    global_vector, _ = client_vectors(0, SIZE, seed=2)
    for rnd in range(1, ROUNDS + 1):
        _, vectors = client_vectors(CLIENTS, SIZE, seed=10 + rnd, center=global_vector + 0.05)
        weights = [int(w) for w in rng.integers(5, 60, CLIENTS)]
        _set_current(flower, global_vector)
        pairs = list(zip(vectors, weights, strict=True))
        losses = [0.5 + i / 10 for i in range(CLIENTS)]  # q-FedAvg weighs by loss
        expected, _ = flower.aggregate_train(
            rnd, [reply(v, w, losses[i], node=i + 1) for i, (v, w) in enumerate(pairs)]
        )
        aggregation = ours.start_round(global_vector, rnd)
        for i, (v, w) in enumerate(pairs):
            aggregation.offer(decode_reply(reply(v, w, losses[i], node=i + 1), SIZE))
        got = aggregation.finish()
        want = expected[VECTOR_KEY].numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale, err_msg=f"round {rnd}")
        global_vector = want.astype(np.float32)  # Flower's FedAdam and QFedAvg answer float64
