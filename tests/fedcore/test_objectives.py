"""Losses, their metrics, optimizers and gradient clipping (fedcore.objectives)."""

from __future__ import annotations

import numpy as np
import pytest

from fedcore.engine import Tensor
from fedcore.evaluate import evaluate
from fedcore.models import build_model
from fedcore.objectives import (
    LOSSES,
    clip_grad_norm,
    make_optimizer,
    objective,
)
from fedcore.optim import SGD, AdamW
from fedcore.resolve import ResolveError


def _data(regression: bool = False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.normal(size=50).astype(np.float32) if regression else rng.integers(0, 3, 50)
    return x, y


def test_cross_entropy_reports_accuracy_and_mse_reports_mae():
    x, y = _data()
    model = build_model("mlp", input_dim=4, num_classes=3, hidden=[8])
    loss, accuracy = evaluate(model, x, y, batch_size=7)
    logits = model(Tensor(x)).data.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_p[np.arange(50), y].mean(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == y).mean())

    x, t = _data(regression=True)
    reg = build_model("mlp", input_dim=4, num_classes=1, hidden=[8])
    mse_obj = objective("mse")
    assert mse_obj.metric == "mae"
    loss, mae = evaluate(reg, x, t, batch_size=7, loss=mse_obj)
    pred = reg(Tensor(x)).data.reshape(-1).astype(np.float64)
    assert loss == pytest.approx(((pred - t) ** 2).mean(), rel=1e-5)
    assert mae == pytest.approx(np.abs(pred - t).mean(), rel=1e-5)


USER_LOSSES = """
from fedcore.engine import mse

def huberish(output, target):
    return mse(output, target.reshape(output.shape))

def labelled(output, target):
    from fedcore.engine import softmax_cross_entropy
    return softmax_cross_entropy(output, target)
labelled.metric = "accuracy"

def weird(output, target):
    return output
weird.metric = "f1"
"""


def test_user_losses_and_their_metric(user_code):
    user_code("userloss", {"fns": USER_LOSSES},
              entry_points={"fedcore.losses": {"huber": "userloss.fns:huberish"}})
    _, t = _data(regression=True)
    assert objective("userloss.fns:huberish", t).metric == "mae"  # float targets
    assert objective("userloss.fns:labelled", t).metric == "accuracy"  # declared
    assert objective("huber", allow_import=False).name == "huber" and "huber" in LOSSES
    with pytest.raises(ResolveError, match="metric must be one of accuracy, mae, got 'f1'"):
        objective("userloss.fns:weird")
    with pytest.raises(ResolveError, match="unknown loss 'hinge'"):
        objective("hinge")


def test_optimizers_and_clipping():
    model = build_model("mlp", input_dim=4, num_classes=3, hidden=[8])
    assert isinstance(make_optimizer("sgd", model, 0.1, momentum=0.9), SGD)
    adam = make_optimizer("adam", model, 0.01, weight_decay=0.1)
    assert isinstance(adam, AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", model, 0.1)
    x, y = _data()
    model.zero_grad()
    objective("cross_entropy").loss(model(Tensor(x)), y).backward()
    before = model.grad_flat().astype(np.float64).copy()
    norm = clip_grad_norm(model, 0.01)
    assert norm == pytest.approx(np.linalg.norm(before), rel=1e-6)
    after = model.grad_flat().astype(np.float64)
    assert np.linalg.norm(after) == pytest.approx(0.01, rel=1e-4)
    np.testing.assert_allclose(after, before * (0.01 / norm), rtol=1e-4, atol=1e-9)
    assert clip_grad_norm(model, 100.0) == pytest.approx(0.01, rel=1e-4)  # under: unchanged
