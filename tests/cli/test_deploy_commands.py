"""``fedcore server`` and ``fedcore client``: bad input is one line and exit code 2, before any
Flower process starts (the real processes run in tests/deploy/test_end_to_end.py)."""

import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "digits.toml"
runner = CliRunner()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def listening():
    """A loopback port something listens on (stands in for a SuperLink)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "cifar", "--partition-id", "0"], "--dataset: unknown data set 'cifar'"),
        (["--dataset", "digits", "--partition-id", "4", "--num-partitions", "4"], "out of range"),
        (["--dataset", "digits"], "--dataset needs --partition-id"),
        ([], "exactly one of --dataset or --data"),
        (["--dataset", "digits", "--partition-id", "0", "--device", "toaster"], "toaster"),
        (["--data", "/no/such/file.npz"], "--data: no such file"),
    ],
)
def test_client_rejects_bad_data_options(listening, args, needle):
    result = runner.invoke(app, ["client", "--superlink", listening, *args])
    assert needle in one_line_error(result)


def test_client_rejects_an_npz_without_labels(tmp_path, listening):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.ones((3, 4)))
    result = runner.invoke(app, ["client", "--superlink", listening, "--data", str(path)])
    assert "missing 'y'" in one_line_error(result)


def test_client_rejects_an_unreachable_superlink(closed_port):
    args = ["--dataset", "digits", "--partition-id", "0"]
    result = runner.invoke(app, ["client", "--superlink", f"127.0.0.1:{closed_port}", *args])
    assert "cannot reach a SuperLink" in one_line_error(result)
    result = runner.invoke(app, ["client", "--superlink", "no-port", *args])
    assert "expected HOST:PORT" in one_line_error(result)


def test_client_rejects_a_missing_certificate(listening):
    args = ["--dataset", "digits", "--partition-id", "0", "--root-certificates", "/no/ca.pem"]
    result = runner.invoke(app, ["client", "--superlink", listening, *args])
    assert "--root-certificates: no such file" in one_line_error(result)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--address", "nowhere"], "--address: expected HOST:PORT"),
        (["--ssl-certfile", str(EXAMPLE)], "TLS needs --ssl-certfile, --ssl-keyfile and"),
        (
            ["--ssl-certfile", "/no/c", "--ssl-keyfile", "/no/k", "--ssl-ca-certfile", "/no/ca"],
            "--ssl-certfile: no such file",
        ),
    ],
)
def test_server_rejects_bad_options(tmp_path, extra, needle):
    result = runner.invoke(app, ["server", str(EXAMPLE), "--db", str(tmp_path / "r.db"), *extra])
    assert needle in one_line_error(result)


def test_server_rejects_bad_scenarios_and_stores_nothing(tmp_path):
    db = tmp_path / "r.db"
    result = runner.invoke(app, ["server", str(tmp_path / "missing.toml"), "--db", str(db)])
    assert "missing.toml: no such file" in one_line_error(result)
    population = tmp_path / "population.toml"
    population.write_text(EXAMPLE.read_text() + '\n[population]\ndevices = { "rpi-4-2gb" = 100 }\n')
    result = runner.invoke(app, ["server", str(population), "--db", str(db)])
    assert "population" in one_line_error(result)
    assert not db.exists()


def test_server_rejects_a_busy_address(tmp_path, listening):
    result = runner.invoke(
        app, ["server", str(EXAMPLE), "--address", listening, "--db", str(tmp_path / "r.db")]
    )
    assert "is in use" in one_line_error(result)


def test_a_paused_deployment_is_not_resumed_as_a_simulation_unasked(tmp_path):
    from aggregator.store import Store
    from simulations.scenario import load_scenario

    db = str(tmp_path / "r.db")
    store = Store(db)
    spec = load_scenario(EXAMPLE)
    run_id = store.create_run(spec.name, "deployment", spec.seed, spec.model_dump(mode="json"))
    store.finish_run(run_id, "paused")
    result = runner.invoke(app, ["runs", "resume", str(run_id), "--db", db])
    assert f"fedcore server SCENARIO --resume {run_id}" in one_line_error(result)
    assert store.get_run(run_id).status == "paused"
    result = runner.invoke(app, ["runs", "resume", str(run_id), "--db", db, "-r", "inprocess"])
    assert result.exit_code == 0, result.output
    assert store.get_run(run_id).status == "completed"


def test_server_resume_names_what_is_wrong(tmp_path):
    from aggregator.store import Store
    from deploy.serverapp import RUNTIME, load_deployable
    from simulations.lifecycle import StoredRun, run_scenario
    from simulations.prepare import prepare_scenario
    from simulations.scenario import load_scenario

    db = str(tmp_path / "runs.db")
    store = Store(db)
    run_scenario(load_scenario(EXAMPLE), store=store)  # run 1: a simulation
    deployed = StoredRun.create(  # run 2: a deployment that finished
        store, prepare_scenario(load_deployable(EXAMPLE.read_text())), RUNTIME
    ).run_id
    store.finish_run(deployed, "completed")
    other = tmp_path / "other.toml"
    other.write_text(EXAMPLE.read_text().replace("rounds = 2", "rounds = 3"))

    def resume(scenario: Path, run_id: int) -> str:
        args = ["server", str(scenario), "--db", db, "--resume", str(run_id)]
        return one_line_error(runner.invoke(app, args))

    assert "no run with id 7" in resume(EXAMPLE, 7)
    assert "ran on the inprocess runtime" in resume(EXAMPLE, 1)
    assert "ran another scenario" in resume(other, deployed)
    assert "is completed: there is nothing to resume" in resume(EXAMPLE, deployed)
