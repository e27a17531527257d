"""SYNTHETIC(alpha, beta) from FedProx (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020): every client has its own softmax-regression task and its own inputs.

For client k: ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` (60x10), ``b_k ~ N(u_k, 1)``;
``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` (60), ``x ~ N(v_k, Sigma)`` with
``Sigma = diag(j^-1.2)``; ``y = argmax(W_k^T x + b_k)``. ``alpha`` controls how much the
clients' models differ, ``beta`` how much their inputs differ. As in the paper's reference
code the second parameter of ``N`` for ``alpha`` and ``beta`` is used as a standard deviation.
Features are left unscaled (Gaussian), as in the paper.

Since every ``W_k`` is drawn afresh, no single model can label another client's examples
better than chance, whatever ``alpha`` and ``beta``. With ``shared_task`` all clients label
with one ``W, b ~ N(0, 1)`` drawn from the seed (FedProx's SYNTHETIC-IID task), perturbed per
client by ``alpha``: ``W_k = W + N(0, alpha)``, ``b_k = b + N(0, alpha)``; ``beta`` still
shifts each client's inputs. That is a federation one global model can learn.
"""

from __future__ import annotations

import numpy as np

from simulations.datasets.base import Dataset, stratified_split

NUM_FEATURES = 60
NUM_CLASSES = 10
_STD = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)


def synthetic_client(
    client_id: int, alpha: float, beta: float, n: int, seed: int = 0, shared_task: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` examples of client ``client_id``: (x float32 (n, 60), y int64 (n,)).

    Seeded by ``(seed, client_id)`` alone (and ``seed`` for the shared task), so a client can
    generate its own data on a device without the others and gets the same data as in the
    centralised loader.
    """
    if client_id < 0 or n < 0:
        raise ValueError(f"client_id and n must be >= 0, got {client_id} and {n}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got {alpha} and {beta}")
    rng = np.random.default_rng([seed, client_id])
    if shared_task:
        task = np.random.default_rng([seed])
        w = task.standard_normal((NUM_FEATURES, NUM_CLASSES))
        b = task.standard_normal(NUM_CLASSES)
        w = w + rng.normal(0.0, alpha, w.shape)
        b = b + rng.normal(0.0, alpha, b.shape)
    else:
        u = rng.normal(0.0, alpha)
        w = rng.normal(u, 1.0, (NUM_FEATURES, NUM_CLASSES))
        b = rng.normal(u, 1.0, NUM_CLASSES)
    v = rng.normal(rng.normal(0.0, beta), 1.0, NUM_FEATURES)
    x = v + rng.standard_normal((n, NUM_FEATURES)) * _STD
    y = np.argmax(x @ w + b, axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def load_synthetic(
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    num_clients: int = 30,
    alpha: float = 1.0,
    beta: float = 1.0,
    samples_per_client: int = 100,
    shared_task: bool = False,
) -> Dataset:
    """Pool ``num_clients`` synthetic clients into one Dataset (SYNTHETIC(1,1) by default).

    The test split comes from the same clients, stratified by (client, label), so every client
    keeps about ``1 - test_fraction`` of its examples for training; ``groups_*`` record each
    example's client for the ``natural`` partition.
    """
    if num_clients < 1 or samples_per_client < 1:
        raise ValueError(
            f"num_clients and samples_per_client must be >= 1, got {num_clients} and "
            f"{samples_per_client}"
        )
    parts = [
        synthetic_client(k, alpha, beta, samples_per_client, seed, shared_task)
        for k in range(num_clients)
    ]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    groups = np.repeat(np.arange(num_clients, dtype=np.int64), samples_per_client)
    train, test = stratified_split(groups * NUM_CLASSES + y, test_fraction, seed)
    return Dataset.from_split(
        "synthetic", x, y, (train, test), NUM_CLASSES, (NUM_FEATURES,), groups=groups
    )
