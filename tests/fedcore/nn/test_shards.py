"""The sharded training step: the whole batch's gradients and update, errors surfaced, and the
whole step wherever a shard could differ."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from fedcore.engine import softmax_cross_entropy
from fedcore.engine.parallel import set_num_threads
from fedcore.models import build_model
from fedcore.nn import BatchNorm, Dense, Flatten, Module, ReLU, Sequential, shards
from fedcore.nn.shards import accumulates, shard_count, train_step
from fedcore.optim import SGD
from tests.fedcore.engine.test_parallel import two_threads
from tests.tolerances import assert_close_to_operands

GPT = dict(vocab_size=40, embed_dim=32, hidden=48, n_layers=2, n_heads=4, n_kv_heads=2)
LR = 0.1


@pytest.fixture(params=["thread", "process"])
def threads(monkeypatch, request) -> Iterator[None]:
    """Two threads, any step worth cutting (the models here are small), the shards after the
    first on a thread replica or in a forked worker (`shards.BACKEND`)."""
    monkeypatch.setattr(shards, "MIN_SHARD_WORK", 0)
    monkeypatch.setattr(shards, "BACKEND", request.param)
    with two_threads():
        yield


def _mlp() -> Module:
    return build_model("mlp", input_dim=12, num_classes=5, hidden=[16, 8], seed=1)


def _cnn() -> Module:
    return build_model("cnn", num_classes=4, input_shape=[8, 8, 1], channels=[3, 4], hidden=8,
                       seed=1)


def _gpt(**kw: object) -> Module:
    return build_model("tiny_gpt", seed=1, **{**GPT, **kw})


def _lstm() -> Module:
    return build_model("lstm", vocab_size=30, embed_dim=8, hidden=12, seed=1)


def _data(kind: str, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    if kind == "mlp":
        return rng.standard_normal((n, 12), dtype=np.float32), rng.integers(0, 5, n)
    if kind == "cnn":
        return rng.standard_normal((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 4, n)
    vocab = 30 if kind == "lstm" else GPT["vocab_size"]
    return rng.integers(0, vocab, (n, 6)), rng.integers(0, vocab, (n * 6,))


MODELS: dict[str, Callable[[], Module]] = {
    "mlp": _mlp, "cnn": _cnn, "gpt": _gpt, "lstm": _lstm,
    "gpt-blocks": lambda: _gpt(checkpoint="blocks"),
    "gpt-lora-int8": lambda: build_model(
        "tiny_gpt", seed=1, lora=dict(rank=4, alpha=8, targets=["attn", "mlp"], base="int8"),
        **GPT),
}


def _step(model: Module, x: np.ndarray, y: np.ndarray,
          micro_batch: int | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """One SGD step with momentum: (loss, gradient, parameters after)."""
    opt = SGD(model.parameters(), lr=LR, momentum=0.9)
    loss = train_step(model, softmax_cross_entropy, x, y, opt, micro_batch=micro_batch)
    return loss, model.grad_flat().copy(), model.get_flat()


def _row_magnitude(make: Callable[[], Module], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The sum over rows of |each row's share of the gradient|: the terms the whole batch's
    gradient adds up (a shard adds them in another order)."""
    per = len(y) // len(x)
    total = np.zeros_like(make().get_flat(), dtype=np.float64)
    for i in range(len(x)):
        model = make()
        model.zero_grad()
        softmax_cross_entropy(model(x[i:i + 1]), y[i * per:(i + 1) * per]).backward()
        total += np.abs(model.grad_flat()) / len(x)
    return total


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_sharded_step_is_the_whole_batch_step(threads, kind):
    make = MODELS[kind]
    x, y = _data(kind.split("-")[0])
    model = make()
    assert shard_count(model, softmax_cross_entropy, x, y) == 2
    cut = _step(model, x, y)
    set_num_threads(1)
    _assert_same_step(make, x, y, cut, _step(make(), x, y))


def _assert_same_step(make, x, y, cut, whole) -> None:
    """A cut step's (loss, gradient, parameters after) against the whole batch's, within
    bounds scaled to the per-row gradient terms."""
    (loss2, grad2, after2), (loss1, grad1, after1) = cut, whole
    before = make().get_flat()
    magnitude = _row_magnitude(make, x, y)
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    assert_close_to_operands(grad2, grad1, magnitude, 64, np.float32)
    assert_close_to_operands(after2, after1, np.abs(before) + LR * magnitude, 64, np.float32)
    assert np.abs(grad1).max() > 0  # the comparison compared something


def test_an_rnn_keeps_the_whole_batch_final_state(threads):
    x, y = _data("lstm")
    model = _lstm()
    _step(model, x, y)
    set_num_threads(1)
    whole = _lstm()
    _step(whole, x, y)
    for got, want in zip(model.rnn.last_state, whole.rnn.last_state, strict=True):
        assert got.shape == want.shape == (len(x), 12)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _manual(model: Module, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The step written out, as callers did before `train_step`."""
    opt = SGD(model.parameters(), lr=LR, momentum=0.9)
    opt.zero_grad()
    loss = softmax_cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item(), model.get_flat()


def _bn_model() -> Module:
    return Sequential(Dense(12, 8, seed=0), BatchNorm(8), ReLU(), Dense(8, 5, seed=1))


@pytest.mark.parametrize("kind", ["mlp", "gpt"])
def test_one_thread_is_the_step_written_out_bit_for_bit(kind):
    set_num_threads(1)
    x, y = _data(kind)
    make = MODELS[kind]
    loss, _, after = _step(make(), x, y)
    want_loss, want = _manual(make(), x, y)
    assert loss == want_loss
    np.testing.assert_array_equal(after, want)


def test_a_model_that_mixes_samples_takes_the_whole_step(threads):
    x, y = _data("mlp")
    model = _bn_model()
    assert shard_count(model, softmax_cross_entropy, x, y) == 1
    loss, _, after = _step(model, x, y)
    want_loss, want = _manual(_bn_model(), x, y)
    assert loss == want_loss
    np.testing.assert_array_equal(after, want)
    model.eval()  # eval-mode batch norm is per sample
    assert shard_count(model, softmax_cross_entropy, x, y) == 2


class _Kept(Module):
    """A module keeping its layers in a list, where a replica cannot swap them."""

    per_sample = True

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = Dense(12, 8, seed=0), Dense(8, 5, seed=1)
        self.layers = [self.first, self.last]

    def forward(self, x: object) -> object:
        for layer in self.layers:
            x = layer(x)
        return x


def test_what_a_shard_could_get_wrong_stays_whole(threads):
    x, y = _data("mlp")
    model = _mlp()
    assert shard_count(model, softmax_cross_entropy, x[:3], y[:3]) == 1  # < 2 rows a shard
    assert shard_count(model, lambda out, t: softmax_cross_entropy(out, t), x, y) == 1
    assert shard_count(Sequential(Flatten(), Dense(12, 5)), softmax_cross_entropy, x, y) == 2
    kept = _Kept()
    loss, _, after = _step(kept, x, y)  # cut by the count, refused by the replica: whole
    want_loss, want = _manual(_Kept(), x, y)
    assert loss == want_loss
    np.testing.assert_array_equal(after, want)


def test_a_step_too_small_for_a_hand_off_stays_whole(threads, monkeypatch):
    x, y = _data("mlp")
    monkeypatch.setattr(shards, "MIN_SHARD_WORK", 10**12)
    assert shard_count(_mlp(), softmax_cross_entropy, x, y) == 1


@pytest.mark.parametrize("bad_shard", [0, 1])
def test_an_error_in_a_shard_reaches_the_caller_and_the_next_step_runs(threads, bad_shard):
    x, y = _data("gpt", n=4)
    model = _gpt()
    bad = y.copy()
    bad[bad_shard * 12] = GPT["vocab_size"]  # a label out of range, in one shard only
    with pytest.raises(ValueError, match="labels must lie in"):
        _step(model, x, bad)
    loss, grad, _ = _step(model, x, y)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_the_benchmark_mlp_stays_whole_and_the_reference_cnn_is_cut():
    """MIN_SHARD_WORK's examples: 34M multiply-adds a shard stays whole, the CNN is cut."""
    from benchmarks.engine import fed_mlp

    with two_threads():
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
        assert shard_count(fed_mlp((512, 256), 784), softmax_cross_entropy, x, y) == 1
        x = rng.random((64, 28, 28, 1), dtype=np.float32)
        cnn = build_model("cnn", num_classes=10, seed=0)
        assert shard_count(cnn, softmax_cross_entropy, x, y[:64]) == 2


def test_a_replica_allocates_from_a_pool_of_its_own_kept_with_the_model(threads, monkeypatch):
    monkeypatch.setattr(shards, "BACKEND", "thread")
    x, y = _data("mlp")
    model = _mlp()
    assert shards.replica_pools(model) == []
    _step(model, x, y)
    (pool,) = shards.replica_pools(model)
    _step(model, x, y)
    assert shards.replica_pools(model) == [pool] and pool.peak_bytes >= model.layout.size * 4


MICRO = {**MODELS, "gpt-lora-int8-blocks": lambda: build_model(
    "tiny_gpt", seed=1, checkpoint="blocks",
    lora=dict(rank=4, alpha=8, targets=["attn", "mlp"], base="int8"), **GPT)}


@pytest.mark.parametrize("kind", sorted(k for k in MICRO if k != "lstm"))
def test_a_micro_batched_step_is_the_whole_batch_step(kind):
    set_num_threads(1)
    make = MICRO[kind]
    x, y = _data(kind.split("-")[0])
    assert accumulates(make(), softmax_cross_entropy, x, y, 2)
    cut = _step(make(), x, y, micro_batch=2)  # 2 + 2 + 2 + 1 rows
    _assert_same_step(make, x, y, cut, _step(make(), x, y))


@pytest.mark.parametrize("kind", ["bn", "lstm", "mlp-whole"])
def test_what_a_micro_batch_could_get_wrong_stays_whole(kind):
    set_num_threads(1)
    make = {"bn": _bn_model, "lstm": _lstm, "mlp-whole": _mlp}[kind]
    x, y = _data(kind.split("-")[0] if kind != "bn" else "mlp")
    micro = len(x) if kind == "mlp-whole" else 2
    assert not accumulates(make(), softmax_cross_entropy, x, y, micro)
    loss, grad, after = _step(make(), x, y, micro_batch=micro)
    want_loss, want_grad, want = _step(make(), x, y)
    assert loss == want_loss
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(after, want)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_micro_batch_is_refused(bad):
    x, y = _data("mlp")
    with pytest.raises(ValueError, match="micro_batch must be a positive int"):
        _step(_mlp(), x, y, micro_batch=bad)
