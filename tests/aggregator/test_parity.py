"""Parity with Flower: the same replies give the same next global model (1e-6 relative).

FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg, Krum,
MultiKrum, Bulyan and QFedAvg (the table of ``flower_cases.py``, shared with the
``FlowerStrategy`` parity suite).

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
from tests.aggregator.conftest import BACKENDS, client_vectors, reply
from tests.aggregator.flower_cases import OPTIONS, case_names, flower_strategy

SIZE, CLIENTS, ROUNDS = 2_000, 7, 3
KEY = "num_examples"


def _set_current(flower, global_vector):
    """What Flower's ``configure_train`` would remember (it needs a grid to be called)."""
    if isinstance(flower, FedOpt):
        flower.current_arrays = {VECTOR_KEY: global_vector.copy()}
    elif isinstance(flower, fl.QFedAvg):
        flower.current_arrays = ArrayRecord({VECTOR_KEY: Array(global_vector.copy())})
    elif isinstance(flower, fl.FedAvgM) and flower.current_arrays is None:
        flower.current_arrays = ArrayRecord({VECTOR_KEY: Array(global_vector.copy())})


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("name", case_names())
def test_same_next_global_model_as_flower(name, device):
    flower = flower_strategy(name, weighted_by_key=KEY)
    ours = build_strategy(
        name,
        {**OPTIONS[name], "max_norm_factor": 0.0},
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
