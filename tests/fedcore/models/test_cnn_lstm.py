"""The cnn and lstm reference models: building by name, input forms, and learning."""

import numpy as np
import pytest

from fedcore.engine import Tensor, no_grad, softmax_cross_entropy
from fedcore.models import MODELS, build_model
from fedcore.optim import SGD, Adam


def test_registered_and_sized_from_scenario_kwargs():
    assert {"cnn", "lstm"} <= set(MODELS)
    mnist = build_model("cnn", input_dim=784, num_classes=10, seed=0)
    digits = build_model("cnn", input_dim=64, num_classes=10, seed=0)
    # 3x3x1x32 + 32, 3x3x32x64 + 64, (7*7*64)x128 + 128, 128x10 + 10
    assert mnist.num_parameters() == 320 + 18496 + 401536 + 1290
    assert digits.num_parameters() == 320 + 18496 + (2 * 2 * 64) * 128 + 128 + 1290
    lm = build_model("lstm", input_dim=20, num_classes=50, seed=0, embed_dim=8, hidden=16)
    assert lm.num_parameters() == 50 * 8 + (8 + 16) * 64 + 64 + 16 * 50 + 50
    with pytest.raises(ValueError, match="not a square image"):
        build_model("cnn", input_dim=60)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("lstm")


def test_cnn_accepts_flat_or_nhwc_input_and_is_seeded():
    model = build_model("cnn", input_shape=(8, 8, 1), num_classes=3, channels=(4, 8), seed=1)
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    a = model(x).data
    np.testing.assert_array_equal(model(x.reshape(5, 64)).data, a)
    assert a.shape == (5, 3)
    twin = build_model("cnn", input_shape=(8, 8), num_classes=3, channels=(4, 8), seed=1)
    np.testing.assert_array_equal(twin.get_flat(), model.get_flat())


def quadrant_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """8x8 noise with a bright 3x3 blob in one of four quadrants; the class is the quadrant."""
    y = rng.integers(0, 4, n)
    x = rng.normal(0.0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = 4 * (c // 2) + rng.integers(0, 2), 4 * (c % 2) + rng.integers(0, 2)
        x[i, r:r + 3, col:col + 3] += 1.0
    return x.reshape(n, 64), y


def test_cnn_learns_a_small_image_task():
    rng = np.random.default_rng(0)
    x, y = quadrant_images(256, rng)
    xt, yt = quadrant_images(200, rng)
    model = build_model("cnn", input_dim=64, num_classes=4, channels=(4, 8), hidden=16, seed=0)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _epoch in range(6):
        for lo in range(0, 256, 32):
            opt.zero_grad()
            loss = softmax_cross_entropy(model(x[lo:lo + 32]), y[lo:lo + 32])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with no_grad():
        acc = float((model(Tensor(xt)).data.argmax(1) == yt).mean())
    assert np.mean(losses[-8:]) < 0.3 * np.mean(losses[:8]), losses
    assert acc > 0.9


def test_lstm_language_model_learns_a_sequence_rule():
    # next token = (token + 3) mod V: learnable from the current token alone
    vocab, batch, seq = 12, 8, 10
    rng = np.random.default_rng(0)
    model = build_model("lstm", vocab_size=vocab, embed_dim=8, hidden=16, seed=0)
    opt = Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        start = rng.integers(0, vocab, (batch, 1))
        tokens = (start + 3 * np.arange(seq + 1)) % vocab
        x, y = tokens[:, :-1], tokens[:, 1:]
        opt.zero_grad()
        logits = model(x)
        assert logits.shape == (batch * seq, vocab)
        loss = softmax_cross_entropy(logits, y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0  # about log(12) at the start
    assert np.mean(losses[-5:]) < 0.2, losses[-5:]


@pytest.mark.parametrize("name, kwargs", [
    ("cnn", dict(input_dim=64, num_classes=10, channels=(4, 8), hidden=16)),
    ("lstm", dict(vocab_size=50, embed_dim=8, hidden=16)),
])
@pytest.mark.parametrize("engine_name", ["naive", "threaded"])
def test_hybridized_and_threaded_steps_equal_eager(name, kwargs, engine_name):
    from fedcore.engine import create_engine, use_engine

    rng = np.random.default_rng(0)
    if name == "cnn":
        data = (rng.random((16, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 16))
    else:
        data = (rng.integers(0, 50, (4, 7)), rng.integers(0, 50, 28))
    eager = build_model(name, seed=0, **kwargs)
    eager_opt = Adam(eager.parameters(), lr=0.01)
    eager_losses = []
    for _ in range(3):
        eager_opt.zero_grad()
        loss = softmax_cross_entropy(eager(data[0]), data[1])
        loss.backward()
        eager_opt.step()
        eager_losses.append(loss.item())
    with use_engine(create_engine(engine_name)):
        model = build_model(name, seed=0, **kwargs)
        step = model.hybridize(optimizer=Adam(model.parameters(), lr=0.01))
        losses = [float(step(*data)) for _ in range(3)]
        np.testing.assert_array_equal(losses, eager_losses)
        np.testing.assert_array_equal(model.get_flat(), eager.get_flat())
