"""Issue 13, findings 9 and 10: what clients wrote cannot drive the operator's terminal or
spreadsheet, and a checkpoint without a recorded digest is refused."""

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from aggregator.store import Store
from aggregator.store.checkpoints import CheckpointError, read_checkpoint
from aggregator.store.models import ClientResult, Round
from cli.main import app
from cli.render import csv_cell, plain, untrusted

QUICKSTART = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"
runner = CliRunner()
HOSTILE = "=cmd|'/c calc'!A1 [/] [link=https://evil.example]click[/link] \x1b]0;pwned\x07\x1b[2J"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """A stored 1-round run in which every rejection reason is what a hostile client wrote."""
    folder = tmp_path_factory.mktemp("hostile")
    scenario = folder / "s.toml"
    scenario.write_text(QUICKSTART.read_text().replace("rounds = 20", "rounds = 1"))
    db = str(folder / "runs.db")
    result = runner.invoke(app, ["simulate", str(scenario), "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    store = Store(db)
    with store.session() as s, s.begin():
        s.execute(update(ClientResult).values(accepted=False, reason=HOSTILE))
    return folder, db


def test_runs_show_and_rounds_show_print_client_text_inertly(hostile_store):
    _, db = hostile_store
    for args in (["runs", "show", "1"], ["rounds", "show", "1", "1"]):
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code == 0, result.output  # `[/]` crashed Rich before
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "[link" in result.stdout  # shown as text, not made a link


def test_csv_export_neutralises_formula_cells(hostile_store):
    folder, db = hostile_store
    out = folder / "run.csv"
    result = runner.invoke(app, ["runs", "export", "1", "--db", db, "-f", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows and all(r["reason"] == "'" + HOSTILE for r in rows)


def test_helpers():
    assert plain("a\x1b[31mb\u202ec\n") == "a?[31mb?c?"
    assert untrusted("[bold]x[/]") == "\\[bold]x\\[/]"
    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_cell(cell).startswith("'")
    assert csv_cell("ok") == "ok" and csv_cell(-1) == -1


def test_a_checkpoint_without_a_recorded_digest_is_refused(hostile_store):
    _, db = hostile_store
    store = Store(db)
    row, _ = store.load_checkpoint(1)
    with pytest.raises(CheckpointError, match="no recorded checksum"):
        read_checkpoint(Path(row.checkpoint_path), None)
    with store.session() as s, s.begin():
        s.execute(update(Round).values(checkpoint_sha256=None))
    with pytest.raises(CheckpointError, match="no recorded checksum"):
        store.load_checkpoint(1)
