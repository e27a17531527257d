import numpy as np
import pytest

from fedcore import protocol
from fedcore.settings import TrainSettings
from fedcore.wire import array_view, read_vector, vector_record


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint32])
def test_vector_round_trip_is_exact_and_zero_copy(dtype):
    vector = (np.arange(5000) * 3).astype(dtype)
    view = read_vector(vector_record(vector))
    assert view.dtype == dtype
    np.testing.assert_array_equal(view, vector)
    assert not view.flags.owndata  # a view of the message bytes, not a copy


def test_read_vector_names_the_missing_key():
    from flwr.app import ArrayRecord

    with pytest.raises(ValueError, match="vector"):
        read_vector(ArrayRecord())


@pytest.mark.parametrize(
    "array",
    [np.asarray(np.float32(2.5)), np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.ones((0, 4))],
    ids=["0-d", "fortran-order", "empty"],
)
def test_array_view_reads_any_numeric_array_np_save_writes(array):
    from flwr.app import Array

    view = array_view(Array(array))
    assert view.shape == array.shape and view.dtype == array.dtype
    np.testing.assert_array_equal(view, array)


def test_train_instructions_round_trip():
    spec = protocol.ModelSpec("mlp", {"input_dim": 64, "hidden": [32, 16], "num_classes": 10})
    settings = TrainSettings(local_epochs=2, batch_size=16, learning_rate=0.05, momentum=0.9)
    ins = protocol.TrainInstructions(3, spec, settings.with_values({"weight_decay": 1e-4}), 1234)
    assert protocol.TrainInstructions.from_config(ins.to_config()) == ins
