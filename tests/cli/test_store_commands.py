"""`fedcore runs|rounds|models|db` through Typer's test runner, on one small stored run."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"
runner = CliRunner()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A database holding one completed 3-round run (id 1)."""
    folder = tmp_path_factory.mktemp("store")
    scenario = folder / "s.toml"
    scenario.write_text(QUICKSTART.read_text().replace("rounds = 20", "rounds = 3"))
    db = str(folder / "runs.db")
    result = runner.invoke(app, ["simulate", str(scenario), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return folder, db


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_rounds_list_and_show(stored):
    _, db = stored
    rounds = json.loads(invoke("rounds", "list", 1, "--db", db, "--json").stdout)
    assert [r["number"] for r in rounds] == [1, 2, 3]
    assert all(len(r["checkpoint_sha256"]) == 64 for r in rounds)
    shown = invoke("rounds", "show", 1, 2, "--db", db)
    assert shown.exit_code == 0 and "checkpoint sha256" in shown.stdout
    clients = json.loads(invoke("rounds", "show", 1, 2, "--db", db, "--json").stdout)["clients"]
    assert len(clients) == 10 and all("accepted" in c for c in clients)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "onnx"])
def test_models_export(stored, fmt):
    folder, db = stored
    out = folder / f"model.{fmt}"
    result = invoke("models", "export", 1, "--db", db, "--format", fmt, "--out", out, "--round", 2)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000
    if fmt == "npz":
        tensors = np.load(out)
        assert sum(tensors[k].size for k in tensors.files) == 64 * 64 + 64 + 64 * 10 + 10
    if fmt == "onnx":
        said = " ".join(result.stdout.split())  # the console wraps at 80 columns
        assert "onnxruntime matches the engine" in said


def test_runs_export_json_and_csv(stored):
    _, db = stored
    data = json.loads(invoke("runs", "export", 1, "--db", db).stdout)
    assert data["status"] == "completed" and len(data["rounds"]) == 3
    assert data["config"]["federation"]["rounds"] == 3
    rows = list(
        csv.DictReader(io.StringIO(invoke("runs", "export", 1, "--db", db, "-f", "csv").stdout))
    )
    assert len(rows) == 30 and rows[0]["round"] == "1"


def test_db_status_and_upgrade(stored):
    _, db = stored
    status = json.loads(invoke("db", "status", "--db", db, "--json").stdout)
    assert status["state"] == "current"
    assert invoke("db", "upgrade", "--db", db).exit_code == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (("runs", "resume", 1), "is completed"),
        (("runs", "pause", 1), "is completed"),
        (("runs", "abort", 7), "no run with id 7"),
        (("runs", "set", 1, "learning_rate=fast"), "expected a number"),
        (("runs", "set", 1, "optimizer=adam"), "KEY one of"),
        (("runs", "set", 1, "local_epochs=1.5"), "local_epochs: expected an integer, got 1.5"),
        (("runs", "set", 1, "momentum=1"), "momentum: must be < 1, got 1"),
        (("runs", "set", 1, "clients_per_round=0"), "clients_per_round: expected a positive"),
        (("rounds", "show", 1, 9), "has no round 9"),
        (("models", "export", 1, "--format", "pickle", "--out", "x"), "--format"),
        (("models", "export", 1, "--out", "/no/such/dir/m.st"), "directory does not exist"),
        (("runs", "export", 1, "--format", "xml"), "--format"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(stored, args, needle):
    _, db = stored
    before = invoke("runs", "export", 1, "--db", db).stdout
    result = invoke(*args, "--db", db)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert invoke("runs", "export", 1, "--db", db).stdout == before


def test_a_tampered_checkpoint_is_refused_on_export(tmp_path, stored):
    folder, db = stored
    path = json.loads(invoke("rounds", "show", 1, 1, "--db", db, "--json").stdout)
    ck = next((folder / "runs-checkpoints" / "run-1").glob("round-00001.safetensors"))
    original = ck.read_bytes()
    try:
        ck.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        result = invoke("models", "export", 1, "--round", 1, "--out", tmp_path / "m", "--db", db)
        assert result.exit_code == 2 and "does not match its checksum" in result.output
    finally:
        ck.write_bytes(original)
    assert path["number"] == 1


def test_an_older_store_refuses_to_start(tmp_path):
    import sqlalchemy as sa

    from aggregator.store.schema import upgrade

    db = tmp_path / "old.db"
    upgrade(sa.create_engine(f"sqlite:///{db}"), "0001")
    result = invoke("runs", "list", "--db", db)
    assert result.exit_code == 2 and "fedcore db upgrade" in result.output
    assert invoke("db", "upgrade", "--db", db).exit_code == 0
    assert invoke("runs", "list", "--db", db).exit_code == 0
