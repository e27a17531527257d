"""``client_runtime.datacheck``: a device's data against the model the server sent."""

import numpy as np
import pytest

from client_runtime.datacheck import DataMismatch, check_data, data_mismatch
from fedcore.protocol import ModelSpec

MLP = ModelSpec("mlp", {"input_dim": 64, "num_classes": 10, "hidden": [64]})
CNN = ModelSpec("cnn", {"input_dim": 784, "input_shape": [28, 28, 1], "num_classes": 10})
LSTM = ModelSpec("lstm", {"vocab_size": 100})


def xy(shape, labels, dtype=np.int64):
    return np.zeros(shape, np.float32), np.asarray(labels, dtype=dtype)


@pytest.mark.parametrize(
    "spec, data",
    [
        (MLP, xy((5, 64), [0, 1, 2, 3, 9])),
        (CNN, xy((5, 28, 28, 1), [0] * 5)),
        (CNN, xy((5, 784), [0] * 5)),  # flat rows of the right size
        (LSTM, (np.full((2, 8), 99, np.float32), np.zeros((2, 8), np.int64))),
    ],
)
def test_fitting_data_passes(spec, data):
    assert data_mismatch(spec, *data) is None


@pytest.mark.parametrize(
    "spec, data, message",
    [
        (MLP, xy((5, 28, 28), [0] * 5), "shape (28, 28) (784 values) but the model takes (64,)"),
        (MLP, xy((5, 64), [0, 1, 2, 3, 11]), "labels span 0..11 but the model has 10 classes"),
        (MLP, xy((5, 64), [0.5] * 5, np.float32), "integer labels 0..9, not float32"),
        (MLP, xy((5, 64), [0] * 4), "need equal counts"),
        (CNN, xy((5, 1, 28, 28), [0] * 5), "shape (1, 28, 28) but the model takes (28, 28, 1)"),
        (LSTM, (np.full((2, 8), 100, np.float32), np.zeros((2, 8))), "token ids 0..99"),
        (LSTM, (np.full((2, 8), 0.5, np.float32), np.zeros((2, 8))), "token ids 0..99"),
    ],
)
def test_mismatches_are_one_line_naming_the_model(spec, data, message):
    found = data_mismatch(spec, *data)
    assert found is not None and message in found and "\n" not in found
    assert found.startswith(f"data check: model {spec.name!r}")
    with pytest.raises(DataMismatch, match="data check"):
        check_data(spec, *data)
