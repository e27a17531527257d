"""Bring your own model: package.module:build, the fedcore.models entry points, and checks."""

from __future__ import annotations

import pytest

from fedcore.models import MODELS, build_model, register_model
from fedcore.nn import Module
from fedcore.resolve import ResolveError

RESMLP = """
import numpy as np
from fedcore.nn import Dense, ReLU, Sequential

def build(input_dim, num_classes, width=16, seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Dense(input_dim, width, rng=rng), ReLU(), Dense(width, num_classes, rng=rng))

def not_a_module(input_dim, num_classes):
    return [1, 2, 3]

NOT_CALLABLE = 3
"""


def test_factory_from_a_package_on_sys_path(user_code):
    user_code("usermodels", {"nets": RESMLP})
    model = build_model("usermodels.nets:build", input_dim=4, num_classes=3, width=8)
    assert isinstance(model, Module) and model.get_flat().size == 4 * 8 + 8 + 8 * 3 + 3


def test_factory_from_an_entry_point(user_code):
    user_code("epmodels", {"nets": RESMLP},
              entry_points={"fedcore.models": {"tiny-net": "epmodels.nets:build"}})
    assert "tiny-net" in MODELS.names() and "mlp" in MODELS.names()
    model = build_model("tiny-net", allow_import=False, input_dim=4, num_classes=2)
    assert model.get_flat().size == 4 * 16 + 16 + 16 * 2 + 2


def test_names_registered_after_import_are_seen():
    @register_model("late-registered-model")
    def late(input_dim: int, num_classes: int):
        from fedcore.models import logreg

        return logreg(input_dim, num_classes)

    try:
        assert "late-registered-model" in MODELS.names()
        assert build_model("late-registered-model", input_dim=3, num_classes=2).num_parameters()
    finally:
        MODELS._names.pop("late-registered-model")


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("usermodels2.nets:nothing", {}, "'usermodels2.nets' has no 'nothing'"),
        ("usermodels2.nets:not_a_module", {"input_dim": 2, "num_classes": 2},
         "returned a list, not a fedcore.nn.Module"),
        ("usermodels2.nets:NOT_CALLABLE", {}, "is a int, not a callable"),
        ("usermodels2.nets:build", {"input_dim": 2, "num_classes": 2, "depth": 3},
         "takes no argument 'depth' (its arguments: input_dim, num_classes, width, seed)"),
        ("usermodels2.nets:build", {"input_dim": 2}, "needs argument 'num_classes'"),
    ],
)
def test_bad_factories_are_one_line_errors(user_code, name, kwargs, expected):
    user_code("usermodels2", {"nets": RESMLP})
    with pytest.raises(ResolveError) as info:
        build_model(name, **kwargs)
    assert expected in str(info.value) and "\n" not in str(info.value)
