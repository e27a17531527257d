"""Model registry, builders, and an end-to-end learning check."""

import numpy as np
import pytest

from fedcore.engine import Tensor, no_grad, softmax_cross_entropy
from fedcore.models import MODELS, build_model, logreg, mlp, register_model
from fedcore.optim import SGD


def test_registry_lists_and_builds():
    assert {"mlp", "logreg"} <= set(MODELS)
    model = build_model("mlp", input_dim=10, num_classes=3, hidden=[8, 6], seed=1)
    assert model(np.zeros((2, 10), np.float32)).shape == (2, 3)
    assert model.num_parameters() == 10 * 8 + 8 + 8 * 6 + 6 + 6 * 3 + 3
    assert build_model("logreg", input_dim=5, num_classes=2).num_parameters() == 12
    with pytest.raises(ValueError, match="unknown model 'resnet'.*cnn, logreg, lstm, mlp"):
        build_model("resnet")
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(mlp)
    with pytest.raises(TypeError):
        MODELS["x"] = mlp


def test_builders_are_deterministic_by_seed():
    np.testing.assert_array_equal(mlp(6, 2, seed=4).get_flat(), mlp(6, 2, seed=4).get_flat())
    assert not np.array_equal(mlp(6, 2, seed=4).get_flat(), mlp(6, 2, seed=5).get_flat())
    assert logreg(6, 2).get_flat().dtype == np.float32


def make_blobs(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three classes on concentric rings in 2-D plus 6 noise features: not linearly separable."""
    y = rng.integers(0, 3, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = 1.0 + 1.5 * y + rng.normal(0, 0.15, n)
    x = np.concatenate([np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1),
                        rng.normal(0, 1, (n, 6))], 1)
    return x.astype(np.float32), y.astype(np.int64)


def accuracy(model, x, y) -> float:
    with no_grad():
        logits = model(Tensor(x))
    return float((logits.data.argmax(1) == y).mean())


def test_mlp_learns_a_nonlinear_problem():
    rng = np.random.default_rng(0)
    x, y = make_blobs(600, rng)
    xt, yt = make_blobs(300, rng)
    model = build_model("mlp", input_dim=8, num_classes=3, hidden=(32, 32), seed=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = accuracy(model, xt, yt)
    losses = []
    for _epoch in range(30):
        order = rng.permutation(len(y))
        for lo in range(0, len(y), 32):
            idx = order[lo:lo + 32]
            opt.zero_grad()
            loss = softmax_cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    after = accuracy(model, xt, yt)
    assert after > 0.9, (before, after)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
