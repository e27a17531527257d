"""A federated run of a CNN exported from PyTorch and imported (``[model] factory =
"onnx:PATH"``) learns what the same CNN written in fedcore.nn learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcore.models import build_model
from simulations.lifecycle import run_scenario
from simulations.prepare import prepare_scenario
from simulations.scenario import scenario_from_dict

from .test_cnn_lstm_runs import sliced

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

SCENARIO = {
    "name": "onnx-cnn",
    "seed": 1,
    "data": {"dataset": "mnist5k", "partition": "iid"},
    "model": {"name": "cnn", "channels": [4, 8], "hidden": 32},
    "federation": {"num_clients": 8, "clients_per_round": 4, "rounds": 3},
    "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05, "momentum": 0.9},
}


def _torch_twin(ours: object) -> object:
    """fedcore's cnn(channels=[4, 8], hidden=32) in PyTorch, with the same initial weights."""
    nn = torch.nn
    theirs = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(7 * 7 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
    p = {k: v.numpy() for k, v in ours.named_parameters()}
    with torch.no_grad():
        for i, name in ((0, "1"), (3, "4")):  # (KH, KW, Cin, Cout) -> (Cout, Cin, KH, KW)
            theirs[i].weight.copy_(torch.from_numpy(p[f"{name}.weight"].transpose(3, 2, 0, 1)))
            theirs[i].bias.copy_(torch.from_numpy(p[f"{name}.bias"]))
        # fedcore flattens (h, w, c), PyTorch (c, h, w): permute the dense weight's rows
        w1 = p["8.weight"].reshape(7, 7, 8, 32).transpose(3, 2, 0, 1).reshape(32, -1)
        theirs[7].weight.copy_(torch.from_numpy(np.ascontiguousarray(w1)))
        theirs[7].bias.copy_(torch.from_numpy(p["8.bias"]))
        theirs[9].weight.copy_(torch.from_numpy(np.ascontiguousarray(p["10.weight"].T)))
        theirs[9].bias.copy_(torch.from_numpy(p["10.bias"]))
    return theirs


@pytest.mark.slow  # one of the suite's longest runs
def test_imported_cnn_learns_like_the_native_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fedcore.models.onnx_cases import export

    native = sliced(prepare_scenario(scenario_from_dict(SCENARIO)), per_client=100, test=300)
    ours = build_model(native.spec.name, **native.spec.kwargs)
    monkeypatch.chdir(tmp_path)  # "onnx:PATH" is relative to the working directory
    export(_torch_twin(ours), np.zeros((2, 1, 28, 28), np.float32), Path("cnn.onnx"))
    scenario = scenario_from_dict({**SCENARIO, "model": {"factory": "onnx:cnn.onnx"}})
    imported = sliced(prepare_scenario(scenario), per_client=100, test=300)
    spec = imported.spec
    assert spec.name == "onnx:cnn.onnx" and spec.kwargs == {
        "num_classes": 10, "input_dim": 784, "seed": SCENARIO["seed"]}

    from client_runtime.cost import forward_flops, model_family

    twin = build_model(spec.name, **spec.kwargs)  # the simulated clock times it like the cnn
    assert model_family(twin) == model_family(ours) == "cnn"
    flops, native_flops = forward_flops(twin, (784,)), forward_flops(ours, (784,))
    assert abs(flops - native_flops) <= 0.1 * native_flops, (flops, native_flops)

    a = run_scenario(native)
    b = run_scenario(imported)
    assert a.final_accuracy > 0.4  # chance is 0.1
    assert abs(b.final_accuracy - a.final_accuracy) <= 0.02, (a.final_accuracy,
                                                               b.final_accuracy)
