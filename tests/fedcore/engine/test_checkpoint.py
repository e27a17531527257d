"""Activation recomputation: gradients equal the recorded step's, nothing but the inputs kept."""

import sys

import numpy as np
import pytest

from fedcore.engine import (
    MutationError,
    Tensor,
    add_,
    checkpoint,
    create_engine,
    get_engine,
    matmul,
    mul,
    no_grad,
    reshape,
    softmax_cross_entropy,
    tanh,
    use_engine,
)
from fedcore.models import build_model

checkpoint_mod = sys.modules["fedcore.engine.checkpoint"]  # the package exports the function

GPT = dict(vocab_size=50, embed_dim=32, hidden=48, n_layers=3, n_heads=4, n_kv_heads=2)
LORA = dict(rank=4, alpha=8, targets=["attn", "mlp"], base="int8")


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding scaled to the operands (the recomputation runs the same
    kernels on the same inputs, so in practice the results are identical)."""
    scale = max(float(np.abs(b).max()), 1e-30)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * scale)


def _grads(checkpointing: str, lora: dict | None, steps: int = 2) -> tuple[list, np.ndarray]:
    """Losses and the flat gradient after `steps` SGD-free steps (same batch each time)."""
    model = build_model("tiny_gpt", seed=3, lora=lora, checkpoint=checkpointing, **GPT)
    rng = np.random.default_rng(1)
    x = rng.integers(0, GPT["vocab_size"], (2, 12))
    y = rng.integers(0, GPT["vocab_size"], (2, 12)).reshape(-1)
    if lora:  # B = 0 would hide A's gradient and the base's input gradients
        with no_grad():
            model.set_flat(rng.standard_normal(model.layout.size).astype(np.float32) * 0.1)
    losses = []
    for _ in range(steps):
        model.zero_grad()
        loss = softmax_cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
    return losses, model.grad_flat().copy()


@pytest.fixture
def row_blocks(monkeypatch):
    """Feed-forward row blocks of 5 rows (24 rows in all: several blocks, the last ragged)."""
    monkeypatch.setattr(checkpoint_mod, "ROW_ELEMS", 5 * GPT["hidden"])


@pytest.fixture
def sequence_groups(monkeypatch):
    """Blocks recomputed one sequence at a time (a sequence is 12 x 32 elements)."""
    monkeypatch.setattr(checkpoint_mod, "BATCH_ELEMS", 12 * GPT["embed_dim"])


@pytest.mark.parametrize("lora", [None, LORA, {**LORA, "freeze_a": True}],
                         ids=["full", "lora-int8", "lora-int8-ffa"])
@pytest.mark.parametrize("rows", [False, True], ids=["rows-whole", "rows-5"])
@pytest.mark.parametrize("groups", [False, True], ids=["batch-whole", "one-sequence"])
def test_checkpointed_blocks_give_the_recorded_gradients(lora, rows, groups, request):
    if rows:
        request.getfixturevalue("row_blocks")
    if groups:
        request.getfixturevalue("sequence_groups")
    ref_losses, ref = _grads("none", lora)
    losses, got = _grads("blocks", lora)
    assert np.allclose(losses, ref_losses, rtol=1e-6)
    assert np.abs(ref).max() > 0
    _close(got, ref)


def test_checkpointed_blocks_on_the_threaded_engine(row_blocks):
    _, ref = _grads("none", LORA)
    with use_engine(create_engine("threaded")):
        _, got = _grads("blocks", LORA)
    _close(got, ref)


def _fn(w: Tensor):
    def fn(x: Tensor) -> Tensor:
        return tanh(matmul(tanh(matmul(x, w)), w))
    return fn


def test_input_and_parameter_gradients_flow_through_a_checkpoint():
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((4, 4)).astype(np.float32), requires_grad=True)
    x0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = []
    for ckpt in (False, True):
        w._grad = None
        x = Tensor(x0, requires_grad=True)
        h = mul(x, 2.0)  # the checkpoint's input has a node of its own
        out = checkpoint(_fn(w), h) if ckpt else _fn(w)(h)
        assert (out.grad_fn == "checkpoint") is ckpt
        out.sum().backward()
        grads.append((x.grad.copy(), w.grad.copy()))
    for a, b in zip(*grads, strict=True):
        _close(a, b)


def test_an_input_written_after_the_forward_is_refused():
    w = Tensor(np.eye(3, dtype=np.float32), requires_grad=True)
    x = mul(Tensor(np.ones((2, 3), np.float32), requires_grad=True), 1.0)
    out = checkpoint(_fn(w), x)
    add_(x, 1.0)  # the recomputation would see other values
    with pytest.raises(MutationError):
        out.sum().backward()


def test_backward_twice_through_a_checkpoint_is_refused():
    w = Tensor(np.eye(3, dtype=np.float32), requires_grad=True)
    out = checkpoint(_fn(w), np.ones((2, 3), np.float32))
    loss = out.sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_nothing_is_recorded_without_grad_and_an_input_returned_keeps_its_node():
    w = Tensor(np.eye(3, dtype=np.float32), requires_grad=True)
    with no_grad():
        assert checkpoint(_fn(w), np.ones((2, 3), np.float32))._node is None
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    out = checkpoint(lambda t: t, x)
    assert x.is_leaf and out.grad_fn == "checkpoint"
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_checkpointed_blocks_keep_less_at_the_peak():
    """The pool's peak over a step (engine-accounted bytes, not RSS: load-independent)."""
    peaks = {}
    for mode in ("none", "blocks"):
        model = build_model("tiny_gpt", seed=0, checkpoint=mode, **{**GPT, "n_layers": 4})
        x = np.zeros((4, 32), np.int64)
        pool = get_engine().pool
        with pool.transient_peak() as peak:
            softmax_cross_entropy(model(x), x.reshape(-1)).backward()
        peaks[mode] = peak[0]
    assert peaks["blocks"] < 0.7 * peaks["none"]


def test_an_unknown_checkpoint_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="checkpoint must be one of none, blocks"):
        build_model("tiny_gpt", checkpoint="layers", **GPT)


def test_row_blocks_give_the_whole_batch_result_and_gradients(monkeypatch):
    monkeypatch.setattr(checkpoint_mod, "ROW_ELEMS", 12)  # 3 rows of width 4 per block
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    x0 = rng.standard_normal((2, 4, 3)).astype(np.float32)  # 8 rows: blocks 3, 3, 2

    def fn(t: Tensor) -> Tensor:
        return tanh(matmul(t, w))

    results = []
    for rows in (False, True):
        w._grad = None
        x = Tensor(x0, requires_grad=True)
        h = mul(x, 1.5)
        out = checkpoint_mod.checkpoint_rows(fn, h, 4) if rows else reshape(
            fn(reshape(h, -1, 3)), 2, 4, 4)
        assert out.shape == (2, 4, 4)
        (out * out).sum().backward()
        results.append((out.data.copy(), x.grad.copy(), w.grad.copy()))
    for a, b in zip(*results, strict=True):
        _close(a, b)


def test_row_blocks_share_the_rows_evenly(monkeypatch):
    monkeypatch.setattr(checkpoint_mod, "ROW_ELEMS", 20)  # at most 5 rows of width 4
    seen = []

    def fn(t: Tensor) -> Tensor:
        seen.append(t.shape[0])
        return mul(t, 2.0)

    x = Tensor(np.ones((2, 4, 4), np.float32), requires_grad=True)
    out = checkpoint_mod.checkpoint_rows(fn, x, 4)
    out.sum().backward()
    assert seen == [4, 4, 4, 4]  # forward, then backward: two blocks of 4, not 5 + 3
    np.testing.assert_array_equal(x.grad, np.full((2, 4, 4), 2.0))


def test_batch_groups_give_the_whole_batch_result_and_gradients(monkeypatch):
    monkeypatch.setattr(checkpoint_mod, "BATCH_ELEMS", 24)  # 2 items of 4 x 3 per group
    rng = np.random.default_rng(0)
    w = Tensor(rng.standard_normal((12, 12)).astype(np.float32), requires_grad=True)
    x0 = rng.standard_normal((5, 4, 3)).astype(np.float32)  # groups of 2, 2, then 1

    def fn(t: Tensor) -> Tensor:  # mixes the rows of an item, never two items
        n = t.shape[0]
        return reshape(tanh(matmul(reshape(t, n, 12), w)), n, 4, 3)

    results = []
    for grouped in (False, True, "donate"):
        w._grad = None
        x = Tensor(x0, requires_grad=True)
        h = mul(x, 1.5)  # donated: its buffer takes its gradient, a group at a time
        out = checkpoint_mod.checkpoint_batch(fn, h, donate=grouped == "donate") if grouped \
            else fn(h)
        assert out.shape == (5, 4, 3)
        (out * out).sum().backward()
        results.append((out.data.copy(), x.grad.copy(), w.grad.copy()))
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            _close(a, b)


def test_a_batch_checkpoint_must_keep_the_leading_axis():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="leading axis"):
        checkpoint_mod.checkpoint_batch(lambda t: reshape(t, 3, 2), x)


def test_a_planned_step_traces_through_checkpoints(row_blocks):
    """Under hybridize's tracer a checkpoint is its function: the planner recomputes by its
    own plan, and the losses are the eager recomputed step's."""
    from fedcore.optim import SGD

    rng = np.random.default_rng(0)
    x = rng.integers(0, GPT["vocab_size"], (2, 12))
    y = rng.integers(0, GPT["vocab_size"], (2, 12)).reshape(-1)
    losses = []
    for planned in (False, True):
        model = build_model("tiny_gpt", seed=1, lora=LORA, checkpoint="blocks", **GPT)
        model.set_flat(np.random.default_rng(2).standard_normal(model.layout.size)
                       .astype(np.float32) * 0.1)
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = model.hybridize(optimizer=opt) if planned else None
        run = []
        for _ in range(3):
            if step is not None:
                run.append(float(step(x, y)))
                continue
            opt.zero_grad()
            loss = softmax_cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
