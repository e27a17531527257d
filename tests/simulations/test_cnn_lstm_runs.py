"""Tiny federated runs of the cnn on MNIST-5k and the lstm on Shakespeare: both learn.

Each client trains on a small slice of its partition and the server evaluates on a slice of
the test split, so a run takes seconds; the full examples are in ``simulations/examples``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from fedcore.evaluate import perplexity
from simulations.datasets import Dataset
from simulations.lifecycle import run_scenario
from simulations.prepare import PartitionLoader, PreparedScenario, prepare_scenario
from simulations.scenario import scenario_from_dict


def sliced(prepared: PreparedScenario, per_client: int, test: int) -> PreparedScenario:
    """``prepared`` with each client's shard cut to ``per_client`` rows, the test to ``test``."""
    data = prepared.data
    small = Dataset(
        name=data.name,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test[:test],
        y_test=data.y_test[:test],
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        vocab=data.vocab,
    )
    loader = prepared.loader
    parts = [p[:per_client] for p in loader.parts]
    return dataclasses.replace(
        prepared, data=small, loader=PartitionLoader(loader.dataset_args, parts)
    )


def test_cnn_on_mnist5k_learns() -> None:
    scenario = scenario_from_dict(
        {
            "name": "tiny-cnn",
            "seed": 1,
            "data": {"dataset": "mnist5k", "partition": "iid"},
            "model": {"name": "cnn", "channels": [4, 8], "hidden": 32},
            "federation": {"num_clients": 8, "clients_per_round": 4, "rounds": 3},
            "train": {"local_epochs": 2, "batch_size": 16, "learning_rate": 0.05,
                      "momentum": 0.9},
        }
    )  # fmt: skip
    result = run_scenario(sliced(prepare_scenario(scenario), per_client=100, test=300))
    losses = [r.test_loss for r in result.rounds]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] and losses[-1] < math.log(10) - 0.5
    assert result.final_accuracy > 0.4  # chance is 0.1


def test_lstm_on_shakespeare_learns() -> None:
    scenario = scenario_from_dict(
        {
            "name": "tiny-lstm",
            "data": {
                "dataset": "shakespeare",
                "partition": "natural",
                "shakespeare": {"vocab_size": 100, "seq_len": 10},
            },
            "model": {"name": "lstm", "embed_dim": 16, "hidden": 32},
            "federation": {"num_clients": 3, "rounds": 3},
            "train": {"local_epochs": 3, "batch_size": 10, "learning_rate": 1.0,
                      "momentum": 0.9},
        }
    )  # fmt: skip
    prepared = sliced(prepare_scenario(scenario), per_client=300, test=300)
    data = prepared.data
    assert data.sequence_targets and prepared.spec.kwargs["vocab_size"] == 100
    result = run_scenario(prepared)
    losses = [r.test_loss for r in result.rounds]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # Better than the unigram model of the training targets, in perplexity.
    counts = np.bincount(data.y_train.ravel(), minlength=100) + 1
    unigram = math.exp(-np.log(counts / counts.sum())[data.y_test.ravel()].mean())
    assert perplexity(losses[-1]) < 0.95 * unigram
    assert 0.0 < result.final_accuracy < 1.0


@pytest.mark.slow  # one of the suite's longest runs
def test_simulate_reports_perplexity_for_a_language_model(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    path = tmp_path / "lm.toml"
    path.write_text(
        'name = "lm"\n'
        '[data]\ndataset = "shakespeare"\npartition = "natural"\n'
        "[data.shakespeare]\nvocab_size = 50\nseq_len = 5\n"
        '[model]\nname = "lstm"\nembed_dim = 8\nhidden = 8\n'
        "[federation]\nnum_clients = 2\nrounds = 1\n"
    )
    db = str(tmp_path / "runs.db")
    result = CliRunner().invoke(app, ["simulate", str(path), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["final_test_perplexity"] == pytest.approx(math.exp(summary["final_test_loss"]))
    text = CliRunner().invoke(app, ["simulate", str(path), "--db", db])
    assert text.exit_code == 0 and "perplexity" in text.output
