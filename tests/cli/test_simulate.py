"""The `fedcore` command through Typer's test runner: happy path, JSON, and bad input."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def small_toml(tmp_path: Path) -> Path:
    text = QUICKSTART.read_text().replace("rounds = 20", "rounds = 2")
    return write(tmp_path, text)


def test_simulate_stores_rounds_and_runs_commands_read_them(tmp_path):
    db = str(tmp_path / "runs.db")
    result = runner.invoke(app, ["simulate", str(small_toml(tmp_path)), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and summary["final_test_accuracy"] > 0.5

    listed = runner.invoke(app, ["runs", "list", "--db", db, "--json"])
    assert listed.exit_code == 0
    assert [r["status"] for r in json.loads(listed.stdout)] == ["completed"]

    shown = runner.invoke(app, ["runs", "show", str(summary["run_id"]), "--db", db, "--json"])
    rounds = json.loads(shown.stdout)["rounds"]
    assert [r["number"] for r in rounds] == [1, 2]
    assert rounds[-1]["test_accuracy"] == pytest.approx(summary["final_test_accuracy"])

    table = runner.invoke(app, ["runs", "show", str(summary["run_id"]), "--db", db])
    assert "test acc" in table.stdout


def test_rounds_show_says_a_secure_round_was_bounded_by_its_clip_not_the_guard(tmp_path):
    db = str(tmp_path / "runs.db")
    for flag in ("--no-secagg", "--secagg"):
        done = runner.invoke(app, ["simulate", str(small_toml(tmp_path)), "--db", db, "--rounds",
                                   "1", flag, "--json"])  # fmt: skip
        assert done.exit_code == 0, done.output
    plain, secure = (  # the words alone: the console wraps lines and table cells
        " ".join(re.sub("[│┃]", " ", runner.invoke(app, ["rounds", "show", str(r), "1", "--db",
                                                        db]).stdout).split())
        for r in (1, 2)
    )  # fmt: skip
    assert "secure aggregation" not in plain and "accepted (in the secure sum)" not in plain
    assert "each update was clipped to +-8 per coordinate" in secure
    assert "norm guard saw no single update" in secure
    assert "accepted (in the secure sum)" in secure


def test_simulate_prints_a_round_table(tmp_path):
    db = str(tmp_path / "runs.db")
    result = runner.invoke(app, ["simulate", str(small_toml(tmp_path)), "--db", db])
    assert result.exit_code == 0, result.output
    assert "test acc" in result.stdout and "final test accuracy" in result.stdout


@pytest.mark.parametrize(
    "args_of, needle",
    [
        (lambda p, t: ["simulate", str(t / "missing.toml")], "missing.toml"),
        (lambda p, t: ["simulate", str(p), "--runtime", "gpu-cloud"], "--runtime"),
        (lambda p, t: ["simulate", str(p), "--array-backend", "tpu"], "--array-backend"),
        (
            lambda p, t: ["simulate", str(p), "--db", str(t / "no" / "dir" / "x.db")],
            "does not exist",
        ),
        (lambda p, t: ["runs", "show", "99", "--db", str(t / "r.db")], "no store at"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args_of, needle):
    path = small_toml(tmp_path)
    result = runner.invoke(app, args_of(path, tmp_path))
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "old, new, key",
    [
        ('dataset = "digits"', 'dataset = "cifar100"', "data.dataset"),
        ("rounds = 20", 'rounds = "ten"', "federation.rounds"),
        ('strategy = "fedavg"', 'strategy = "fedmagic"', "federation.strategy"),
        ("num_clients = 20", "num_clients = 5000", "num_clients"),
        ('name = "mlp"', 'name = "resnet"', "model.name"),
    ],
)
def test_bad_scenarios_name_the_key(tmp_path, old, new, key):
    text = QUICKSTART.read_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new))
    result = runner.invoke(app, ["simulate", str(path), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.db").exists()  # nothing was opened, let alone written


def test_the_old_option_names_still_work_for_one_release(tmp_path):
    """--backend (now --runtime) and --device (now --array-backend): a deprecation line."""
    db = str(tmp_path / "runs.db")
    args = ["simulate", str(small_toml(tmp_path)), "--db", db, "--json"]
    result = runner.invoke(app, [*args, "--backend", "inprocess", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: --backend is deprecated, use --runtime" in result.output
    assert "warning: --device is deprecated, use --array-backend" in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["runtime"] == "inprocess"
    both = runner.invoke(app, [*args, "--backend", "inprocess", "--runtime", "inprocess"])
    assert both.exit_code == 2 and "--backend: renamed --runtime" in both.output


def test_a_bad_scenario_stores_nothing(tmp_path):
    db = tmp_path / "r.db"
    ok = runner.invoke(app, ["simulate", str(small_toml(tmp_path)), "--db", str(db), "--json"])
    assert ok.exit_code == 0
    bad = write(tmp_path, "name = 'x'\n")
    assert runner.invoke(app, ["simulate", str(bad), "--db", str(db)]).exit_code == 2
    listed = json.loads(runner.invoke(app, ["runs", "list", "--db", str(db), "--json"]).stdout)
    assert len(listed) == 1 and listed[0]["status"] == "completed"
