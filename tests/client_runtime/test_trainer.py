"""Local training and evaluation with a label per example and with a target per position."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from client_runtime.trainer import train_local
from fedcore.engine import Tensor
from fedcore.evaluate import evaluate, perplexity
from fedcore.models import build_model
from fedcore.nn import Dense, Module
from fedcore.settings import TrainSettings


class Bigram(Module):
    """A next-token model: token ids (N, T) -> logits (N*T, V) from the current token only."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.out = Dense(vocab, vocab, init="glorot", seed=0)

    def forward(self, x: Tensor) -> Tensor:
        ids = x.data.reshape(-1)
        onehot = np.zeros((len(ids), self.vocab), np.float32)
        onehot[np.arange(len(ids)), ids] = 1.0
        return self.out(onehot)


def cyclic_text(n: int, seq_len: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Windows of a stream where token t is followed by (t + 1) % vocab most of the time."""
    rng = np.random.default_rng(seed)
    stream = np.empty(n * seq_len + 1, dtype=np.int64)
    stream[0] = 0
    for i in range(1, len(stream)):
        jump = rng.random() < 0.1
        stream[i] = rng.integers(vocab) if jump else (stream[i - 1] + 1) % vocab
    x = stream[:-1].reshape(n, seq_len)
    y = stream[1:].reshape(n, seq_len)
    return x, y


CONFIG = TrainSettings(local_epochs=3, batch_size=8, learning_rate=0.5, momentum=0.9)


def test_sequence_targets_train_and_evaluate() -> None:
    x, y = cyclic_text(64, 6, vocab=12)
    model = Bigram(12)
    loss0, acc0 = evaluate(model, x, y)
    result = train_local(model, x, y, CONFIG, seed=1)
    loss1, acc1 = evaluate(model, x, y, batch_size=10)  # batches of rows, not of tokens
    assert result.num_examples == 64 and math.isfinite(result.train_loss)
    assert loss1 < loss0 - 1.0 and acc1 > 0.8 > acc0
    assert perplexity(loss1) == pytest.approx(math.exp(loss1))
    assert perplexity(loss1) < perplexity(loss0)


def test_sequence_accuracy_is_per_token() -> None:
    model = Bigram(4)
    model.out.weight.data[...] = 10 * np.roll(np.eye(4, dtype=np.float32), 1, axis=1)
    x = np.array([[0, 1], [2, 3]], dtype=np.int64)
    y = np.array([[1, 2], [3, 3]], dtype=np.int64)  # the model predicts 1, 2, 3, 0
    loss, accuracy = evaluate(model, x, y)
    assert accuracy == 0.75 and loss > 0


def test_labels_per_example_still_work() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = build_model("logreg", input_dim=5, num_classes=2, seed=0)
    loss0, _ = evaluate(model, x, y)
    train_local(model, x, y, CONFIG, seed=1)
    loss1, accuracy = evaluate(model, x, y)
    assert loss1 < loss0 and accuracy > 0.9


def test_mismatched_targets_are_an_error() -> None:
    x, y = cyclic_text(4, 3, vocab=5)
    with pytest.raises(ValueError, match="does not match logits"):
        train_local(Bigram(5), x, y[:, :2], CONFIG)
    with pytest.raises(ValueError, match="x has 4 rows but y has 3"):
        train_local(Bigram(5), x, y[:3], CONFIG)


def test_perplexity_overflow_is_inf() -> None:
    assert perplexity(0.0) == 1.0 and perplexity(1e6) == math.inf


def test_micro_batches_train_the_same_model(monkeypatch) -> None:
    """`micro_batch` reaches the step: the tiny GPT trained in micro-batches of 2 rows ends
    where the whole-batch training does, up to float rounding."""
    from fedcore.nn import shards

    seen = []
    accumulated = shards._accumulated
    monkeypatch.setattr(shards, "_accumulated",
                        lambda *a: seen.append(a[-1]) or accumulated(*a))
    x, y = cyclic_text(16, 6, vocab=12)
    settings = TrainSettings(local_epochs=1, batch_size=8, learning_rate=0.1)
    ends = []
    for micro in (0, 2):
        model = build_model("tiny_gpt", vocab_size=12, embed_dim=16, hidden=24, n_layers=1,
                            n_heads=2, n_kv_heads=1, seed=0)
        done = train_local(model, x, y, dataclasses.replace(settings, micro_batch=micro),
                           seed=1)
        ends.append((done.train_loss, model.get_flat()))
    (whole, w_flat), (micro, m_flat) = ends
    assert seen == [2, 2]  # two batches of 8, each in micro-batches of 2
    assert micro == pytest.approx(whole, rel=1e-5)
    np.testing.assert_allclose(m_flat, w_flat, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(w_flat, build_model(
        "tiny_gpt", vocab_size=12, embed_dim=16, hidden=24, n_layers=1, n_heads=2,
        n_kv_heads=1, seed=0).get_flat())  # training moved the weights
