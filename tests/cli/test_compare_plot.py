"""`fedcore runs compare --plot`: a synchronous and an asynchronous run against simulated time."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from aggregator.store import Store
from cli.compare import default_axis, x_values
from cli.main import app
from simulations.lifecycle import run_scenario
from simulations.scenario import scenario_from_dict
from tests.aggregator.test_asynchronous import scenario
from tests.cli.test_deploy_commands import one_line_error

runner = CliRunner()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run 1: synchronous, run 2: asynchronous, both on a simulated population."""
    folder = tmp_path_factory.mktemp("compare")
    db = str(folder / "runs.db")
    store = Store(db)
    run_scenario(scenario_from_dict(scenario(rounds=3, population=True)), store=store)
    run_scenario(scenario_from_dict(scenario(rounds=6, population=True, mode="async",
                                             concurrency=6, buffer=3)), store=store)
    return folder, db


def test_the_curves_are_drawn_against_simulated_time(two_runs):
    pytest.importorskip("matplotlib")
    folder, db = two_runs
    png = folder / "cmp.png"
    result = runner.invoke(app, ["runs", "compare", "1", "2", "--db", db, "--json",
                                 "--plot", str(png)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["x"] == "simulated" and [r["mode"] for r in out["runs"]] == ["sync", "async"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store = Store(db)
    for run_id in (1, 2):
        run = store.get_run(run_id)
        xs = x_values(run, "simulated")
        assert xs == [r.metrics["sim_clock_s"] for r in run.rounds]
        assert xs == sorted(xs) and xs[-1] > 0
    table = runner.invoke(app, ["runs", "compare", "1", "2", "--db", db, "--plot",
                                str(folder / "t.png")])
    assert "simulated time (s)" in table.output and "async" in table.output


@pytest.mark.parametrize("axis", ["round", "wall"])
def test_round_and_wall_time_stay_available(two_runs, axis):
    pytest.importorskip("matplotlib")
    folder, db = two_runs
    png = folder / f"{axis}.png"
    result = runner.invoke(app, ["runs", "compare", "1", "2", "--db", db, "--json",
                                 "--plot", str(png), "--x", axis])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["x"] == axis and png.stat().st_size > 0
    run = Store(db).get_run(2)
    xs = x_values(run, axis)
    if axis == "round":
        assert xs == [1, 2, 3, 4, 5, 6]
    else:
        assert xs == pytest.approx(list(itertools.accumulate(r.seconds for r in run.rounds)))


def test_a_run_without_simulated_time_falls_back_to_rounds_and_a_bad_axis_is_one_line(
        two_runs):
    timed = SimpleNamespace(rounds=[SimpleNamespace(metrics={"sim_clock_s": 1.0})])
    untimed = SimpleNamespace(rounds=[SimpleNamespace(metrics=None)])
    assert default_axis([timed, timed]) == "simulated"
    assert default_axis([timed, untimed]) == "round"
    folder, db = two_runs
    bad = runner.invoke(app, ["runs", "compare", "1", "2", "--db", db, "--plot",
                              str(folder / "x.png"), "--x", "steps"])
    assert "--x: expected one of simulated, round, wall" in one_line_error(bad)
    assert not (folder / "x.png").exists()
