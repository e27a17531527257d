"""Issue 13, finding 7: a device checks a model's cost before building it; its cache is bounded."""

import tracemalloc

import numpy as np
import pytest

from client_runtime.model_budget import (
    BYTES_PER_PARAMETER,
    ModelCache,
    ModelTooLarge,
    check_model_fits,
    parameter_count,
)
from fedcore import protocol
from fedcore.models import build_model
from fedcore.nn import state_size

SPECS = [
    ("mlp", {"input_dim": 64, "num_classes": 10, "hidden": [32, 16]}),
    ("mlp", {"input_dim": 20, "num_classes": 3}),
    ("logreg", {"input_dim": 64, "num_classes": 10}),
    ("cnn", {"num_classes": 10, "input_dim": 64, "channels": [4, 8], "hidden": 16}),
    ("cnn", {"num_classes": 10}),
    ("lstm", {"num_classes": 50, "embed_dim": 8, "hidden": 16}),
    ("tiny_gpt", {"vocab_size": 50, "embed_dim": 16, "hidden": 24, "n_layers": 2}),
    ("mobilenet", {"num_classes": 10, "input_dim": 64, "channels": [4, 8]}),
]


@pytest.mark.parametrize("name, kwargs", SPECS)
def test_the_count_bounds_the_built_model_tightly(name, kwargs):
    spec = protocol.ModelSpec(name, kwargs)
    actual = state_size(build_model(name, allow_import=False, **kwargs))  # what travels
    estimate = parameter_count(spec)
    assert actual <= estimate <= 1.1 * actual + 64


def test_a_huge_model_spec_is_refused_before_anything_is_allocated():
    spec = protocol.ModelSpec("mlp", {"input_dim": 100_000, "num_classes": 10, "hidden": [100_000]})
    tracemalloc.start()
    with pytest.raises(ModelTooLarge, match="memory"):
        ModelCache().get(spec, False, 100, budget=2**30)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


def test_the_budget_counts_parameters_gradients_and_optimizer_state():
    spec = protocol.ModelSpec("logreg", {"input_dim": 64, "num_classes": 10})
    count = 650
    check_model_fits(spec, count, count * BYTES_PER_PARAMETER)
    with pytest.raises(ModelTooLarge):
        check_model_fits(spec, count, count * BYTES_PER_PARAMETER - 1)
    with pytest.raises(ModelTooLarge, match="server sent"):  # a spec smaller than the vector
        check_model_fits(spec, 10**6, None)


def test_the_model_cache_is_bounded():
    cache = ModelCache(size=2)
    for classes in (2, 3, 4, 5):
        spec = protocol.ModelSpec("logreg", {"input_dim": 8, "num_classes": classes})
        model = cache.get(spec, False, 9 * classes, None)
        assert model.num_parameters() == 9 * classes
    assert len(cache) == 2


def test_a_spec_that_does_not_match_the_global_vector_is_refused():
    spec = protocol.ModelSpec("mlp", {"input_dim": 8, "num_classes": 2})
    with pytest.raises(ValueError, match="server sent"):
        ModelCache().get(spec, False, 10, None)
    assert np.float32  # numpy is what the cache hands out


def test_a_client_app_pickles_without_the_models_it_cached():
    """Flower's Ray runtime pickles the ClientApp (closures by value): the cache must stay in
    the module, or the driver's models reach the actors read-only and training fails."""
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    from client_runtime import app as client_app
    from client_runtime import handlers

    spec = protocol.ModelSpec("mlp", {"input_dim": 256, "num_classes": 10, "hidden": [256]})
    size = parameter_count(spec)
    handlers._model_for(spec, False, 256 * 256 + 256 + 256 * 10 + 10, None)
    app = client_app.make_client_app(lambda pid: (np.zeros((1, 256), np.float32), [0]))
    assert size > 60_000 and len(cloudpickle.dumps(app)) < 4 * 60_000
