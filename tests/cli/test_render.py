"""The round table: simulated time and energy columns appear for a simulated population."""

import json
from types import SimpleNamespace

import numpy as np
from rich.console import Console
from typer.testing import CliRunner

from aggregator.rounds import ClientOutcome, RoundOutcome
from cli.main import app
from cli.render import RoundRow, round_table


def text_of(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def outcome(number: int, metrics: dict[str, float]) -> RoundOutcome:
    clients = [ClientOutcome(0, 7, True, 10, 0.5, 0.1)]
    return RoundOutcome(number, clients, 0.5, 0.4, 0.9, 1.5, np.zeros(2), metrics=metrics)


def test_a_plain_run_has_no_simulated_columns():
    row = RoundRow.of(outcome(1, {}))
    assert (row.sim_seconds, row.energy_j) == (None, None)
    text = text_of(round_table([row]))
    assert "test acc" in text and "sim time" not in text and "energy J" not in text


def test_a_population_run_shows_simulated_time_and_energy():
    rows = [
        RoundRow.of(outcome(1, {"sim_round_s": 42.0, "energy_j": 1234.5})),
        RoundRow.of(outcome(2, {"sim_round_s": 600.0, "energy_j": 10.0})),
        RoundRow.of(outcome(3, {"sim_round_s": 9000.0, "energy_j": 0.0332})),
        RoundRow.of(outcome(4, {"sim_round_s": 0.002068, "energy_j": 0.0})),
    ]
    text = text_of(round_table(rows))
    assert "sim time" in text and "energy J" in text
    assert "42 s" in text and "10.0 min" in text and "2.5 h" in text and "0.00207 s" in text
    assert "1,234.5" in text and "0.0332" in text


def test_stored_rows_read_the_round_metrics():
    stored = SimpleNamespace(
        number=4,
        num_selected=6,
        num_accepted=5,
        train_loss=0.3,
        test_accuracy=0.8,
        seconds=0.2,
        metrics={"sim_round_s": 30.0, "energy_j": 2.5, "available": 20.0},
    )
    assert RoundRow.of(stored) == RoundRow(4, 6, 5, 0.3, 0.8, 0.2, 30.0, 2.5)
    legacy = SimpleNamespace(**{**vars(stored), "metrics": None})  # stored before 0003
    assert RoundRow.of(legacy).sim_seconds is None


def test_rounds_list_of_a_stored_population_run(tmp_path):
    scenario = tmp_path / "pop.toml"
    scenario.write_text(
        'name = "pop"\nseed = 3\n'
        '[data]\ndataset = "digits"\npartition = "iid"\n'
        '[model]\nname = "logreg"\n'
        "[federation]\nclients_per_round = 6\nrounds = 2\n"
        "[train]\nbatch_size = 16\n"
        "[population]\nsize = 30\n"
        '[population.devices]\n"android-mid" = 50\n"rpi-zero-2w" = 50\n'
    )
    db = str(tmp_path / "runs.db")
    runner = CliRunner()
    ran = runner.invoke(app, ["simulate", str(scenario), "--db", db, "--report", str(tmp_path)])
    assert ran.exit_code == 0, ran.output
    assert "sim time" in ran.stdout and "energy J" in ran.stdout
    listed = runner.invoke(app, ["rounds", "list", "1", "--db", db, "--json"])
    rounds = json.loads(listed.stdout)
    assert all(r["metrics"]["sim_round_s"] > 0 and r["metrics"]["energy_j"] > 0 for r in rounds)
    table = runner.invoke(app, ["rounds", "list", "1", "--db", db])
    assert "sim time" in table.stdout and "energy J" in table.stdout
