"""Your own files through the CLI: split, simulate with [evaluation], bad input stores nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.cli.test_deploy_commands import one_line_error

runner = CliRunner()

SCENARIO = """
name = "my-files"
seed = 1
[data]
dataset = "files"
path = "{path}"
[model]
name = "mlp"
hidden = [16]
[federation]
num_clients = 4
rounds = 2
[train]
local_epochs = 2
batch_size = 16
learning_rate = 0.05
[evaluation]
fraction = 0.5
local_test = 0.25
"""


@pytest.fixture
def clients(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 6)) + y[:, None]
    np.savez(tmp_path / "all.npz", x=x, y=y)
    out = tmp_path / "clients"
    result = runner.invoke(app, ["data", "split", str(tmp_path / "all.npz"), "--clients", "4",
                                 "--partition", "dirichlet", "--alpha", "1.0", "--out", str(out),
                                 "--test-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    return out


def test_files_split_then_simulated_with_federated_evaluation(tmp_path, clients):
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(path=clients))
    db = str(tmp_path / "runs.db")
    result = runner.invoke(app, ["simulate", str(scenario), "--db", db, "--json",
                                 "--set", "federation.rounds=3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 3 and summary["final_federated"]["clients"] == 2
    shown = json.loads(runner.invoke(app, ["rounds", "show", str(summary["run_id"]), "3",
                                           "--db", db, "--json"]).stdout)
    stored = shown["evaluation"]
    assert len(stored["clients"]) == 2
    assert stored["summary"]["metric"] == pytest.approx(summary["final_federated"]["metric"])
    table = runner.invoke(app, ["runs", "show", str(summary["run_id"]), "--db", db])
    assert "fed" in table.output and "p10-p90" in table.output and "worst" in table.output
    listed = runner.invoke(app, ["runs", "list", "--db", db])
    assert f"{100 * summary['final_test_accuracy']:.2f} %" in listed.output
    again = runner.invoke(app, ["simulate", str(scenario), "--db", db, "--json"])
    assert again.exit_code == 0
    both = runner.invoke(app, ["runs", "compare", "1", "2", "--db", db, "--json",
                               "--plot", str(tmp_path / "cmp.png")])
    assert both.exit_code == 0, both.output
    rows = json.loads(both.stdout)["runs"]
    assert [r["rounds"] for r in rows] == [3, 2] and rows[0]["federated"]["clients"] == 2
    if json.loads(both.stdout)["plot"]:
        assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c / "client-0001.npz", "bad.toml: data.partition: "),
        (lambda c: c / "nothing-*.npz", "bad.toml: data.path: "),
    ],
)
def test_bad_files_are_one_line_and_store_nothing(tmp_path, clients, change, needle):
    scenario = tmp_path / "bad.toml"
    scenario.write_text(SCENARIO.format(path=change(clients)))
    db = tmp_path / "runs.db"
    line = one_line_error(runner.invoke(app, ["simulate", str(scenario), "--db", str(db)]))
    assert needle in line
    assert not db.exists()


def test_object_arrays_are_refused_naming_the_file(tmp_path, clients):
    np.savez(clients / "client-0002.npz", x=np.array([None] * 3, dtype=object),
             y=np.zeros(3, int))
    scenario = tmp_path / "bad.toml"
    scenario.write_text(SCENARIO.format(path=clients))
    db = tmp_path / "runs.db"
    line = one_line_error(runner.invoke(app, ["simulate", str(scenario), "--db", str(db)]))
    assert "client-0002.npz: holds object arrays (refused: never unpickled)" in line
    assert not db.exists()


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["train.local_epochs=zero"], "train.local_epochs: expected an integer, got 'zero'"),
        (["federation.rounds"], "--set 'federation.rounds': expected KEY=VALUE"),
        (["model.factory=nopkg.mod:build"], "model.factory: model 'nopkg.mod:build': no module"),
        (["model.factory=mlp"], "model.factory: give model.name or model.factory, not both"),
    ],
)
def test_set_is_validated_like_the_file(tmp_path, clients, sets, needle):
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(path=clients))
    db = tmp_path / "runs.db"
    args = ["simulate", str(scenario), "--db", str(db)]
    for item in sets:
        args += ["--set", item]
    assert needle in one_line_error(runner.invoke(app, args))
    assert not db.exists()
