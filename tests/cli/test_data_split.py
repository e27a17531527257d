"""``fedcore data split``: client files a scenario and a device read, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from fedcore.datafiles import read_xy
from simulations.datasets.files import load_files
from tests.cli.test_deploy_commands import one_line_error

runner = CliRunner()


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "all.npz"
    np.savez(path, x=rng.normal(size=(400, 5)), y=rng.integers(0, 4, 400))
    return path


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_split_writes_one_file_per_client_and_a_summary(tmp_path, source, scheme):
    out = tmp_path / "clients"
    args = ["data", "split", str(source), "--clients", "5", "--partition", scheme,
            "--test-fraction", "0.1"]
    if scheme == "dirichlet":
        args += ["--alpha", "0.5"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    files = sorted(out.glob("client-*.npz"))
    assert [f.stem for f in files] == [r["client"] for r in summary["clients"]]
    x_all, y_all = read_xy(source)
    total = 0
    for file, row in zip(files, summary["clients"], strict=True):
        x, y = read_xy(file)
        assert len(y) == row["examples"] and np.bincount(y, minlength=4).tolist() == row["labels"]
        total += len(y)
    assert total + summary["test"] == 400 and summary["test"] == 40
    data = load_files(0.2, 0, path=str(out))  # a scenario's "files" reads them back
    assert data.num_train == 360 and data.num_test == 40

    table = runner.invoke(app, [*args, "--out", str(tmp_path / "again")])
    assert table.exit_code == 0 and "client-0004" in table.output and "examples" in table.output


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--partition", "dirichlet"], "--alpha: the dirichlet partition needs it"),
        (["--partition", "natural"], "--partition: expected one of iid, dirichlet"),
        (["--alpha", "0.3"], "--alpha: only used by the dirichlet partition"),
        (["--clients", "0"], "--clients: must be >= 1"),
        (["--clients", "1000"], "--partition: more clients than examples"),
    ],
)
def test_bad_split_input_is_one_line(tmp_path, source, extra, needle):
    out = tmp_path / "out"
    args = ["data", "split", str(source), "--clients", "3", "--out", str(out), *extra]
    assert needle in one_line_error(runner.invoke(app, args))
    assert not list(out.glob("*.npz")) if out.exists() else True


def test_bad_source_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array([None, 1], dtype=object), y=np.zeros(2, int))
    result = runner.invoke(app, ["data", "split", str(bad), "--clients", "2", "--out",
                                 str(tmp_path / "o")])
    assert f"{bad}: holds object arrays" in one_line_error(result)
    missing = runner.invoke(app, ["data", "split", str(tmp_path / "nope.npz"), "--clients", "2",
                                  "--out", str(tmp_path / "o")])
    assert "nope.npz: no such file" in one_line_error(missing)
