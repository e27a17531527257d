"""The deployed ServerApp and ClientApp, driven in-process over an ``InProcessGrid``.

The same app objects Flower's SuperLink and SuperNodes load (``deploy.serverapp:app``,
``deploy.clientapp:app``), with the run config and node configs a deployment gives them; the
result must be the simulation's, bit for bit, and stored like it.
"""

import os
from unittest import mock

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from aggregator.rounds import RoundFailed
from aggregator.store import Store
from deploy import clientapp, serverapp
from deploy.appdir import pyproject, write_app
from deploy.settings import DeploySettings, SettingsError
from simulations.lifecycle import run_scenario
from simulations.runtimes.inprocess import InProcessGrid
from simulations.scenario import load_scenario
from tests.deploy.fleet import EXAMPLE


def grid_of(run_config: dict, node_configs: list[dict]) -> InProcessGrid:
    """Nodes running ``deploy.clientapp.app`` with these node configs and this run config."""
    grid = InProcessGrid(clientapp.app, len(node_configs), node_config=node_configs.__getitem__)
    for i in range(len(node_configs)):
        grid.context(grid.node_id(i)).run_config = run_config
    return grid


def deploy_in_process(settings: DeploySettings, node_configs: list[dict]) -> None:
    """Run ``deploy.serverapp.app`` over such nodes, as a SuperLink would: the run config
    for everyone, the store in the ServerApp's environment only."""
    run_config = settings.run_config()
    grid = grid_of(run_config, node_configs)
    with mock.patch.dict(os.environ, settings.environment()):
        serverapp.app(grid, Context(grid.run.run_id, 0, {}, RecordDict(), run_config))


def digits_nodes(n: int = 2) -> list[dict]:
    return [{"dataset": "digits", "partition-id": i, "num-partitions": n} for i in range(n)]


def test_a_deployed_run_is_stored_like_the_simulated_one(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    settings = DeploySettings(scenario=EXAMPLE.read_text(), db=db, connect_timeout=5)
    deploy_in_process(settings, digits_nodes())

    store = Store(db)
    [run] = store.list_runs()
    assert (run.runtime, run.status) == ("deployment", "completed")
    assert [r.number for r in run.rounds] == [1, 2]
    simulated = run_scenario(load_scenario(EXAMPLE))
    assert run.rounds[-1].test_accuracy == simulated.final_accuracy
    _, checkpoint = store.load_checkpoint(run.id)
    np.testing.assert_array_equal(checkpoint.params, simulated.final)


def test_nodes_with_their_own_npz_files_train(tmp_path):
    from simulations.prepare import prepare_scenario

    prepared = prepare_scenario(load_scenario(EXAMPLE))
    nodes = []
    for i in range(2):
        x, y = prepared.loader(i)
        np.savez(tmp_path / f"node{i}.npz", x=x, y=y)
        nodes.append({"data": str(tmp_path / f"node{i}.npz"), "device": "rpi-4-2gb"})
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    settings = DeploySettings(scenario=EXAMPLE.read_text(), db=db, connect_timeout=5)
    deploy_in_process(settings, nodes)

    store = Store(db)
    [listed] = store.list_runs()
    run = store.get_run(listed.id)
    assert run.status == "completed" and run.rounds[-1].test_accuracy > 0.85
    clients = run.rounds[-1].clients
    assert {c.device_class for c in clients} == {"rpi-4-2gb"}
    assert all(0 <= c.client_id < clientapp.CLIENT_ID_RANGE for c in clients)


def test_a_node_with_the_wrong_data_fails_the_run_with_its_reason(tmp_path):
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    settings = DeploySettings(scenario=EXAMPLE.read_text(), db=db, connect_timeout=5)
    nodes = [{"dataset": "mnist5k", "partition-id": i} for i in range(2)]
    with pytest.raises(RoundFailed, match="holds 'mnist5k' but the run trains on 'digits'"):
        deploy_in_process(settings, nodes)
    [run] = Store(db).list_runs()
    assert run.status == "failed" and "mnist5k" in run.error


def test_an_unstored_run_needs_no_database():
    settings = DeploySettings(scenario=EXAMPLE.read_text(), connect_timeout=5)
    final = serverapp.run_deployment(
        grid_of(settings.run_config(), digits_nodes()), DeploySettings.of(settings.run_config())
    )
    assert final is not None and final.dtype == np.float32
    from_path = DeploySettings.of({"scenario": str(EXAMPLE)})  # the server may read a path
    assert from_path.scenario == settings.scenario


def test_the_store_never_travels_in_the_run_config(tmp_path):  # issue 13, finding 8
    db = "postgresql+psycopg://fed:s3cret@db.internal/fed"
    settings = DeploySettings(scenario=EXAMPLE.read_text(), db=db, checkpoints="/srv/ckpt")
    config = settings.run_config()
    assert not any("s3cret" in str(v) or "/srv/ckpt" in str(v) for v in config.values())
    text = (write_app(tmp_path / "app", config) / "pyproject.toml").read_text()
    assert "s3cret" not in text and "/srv/ckpt" not in text
    assert DeploySettings.of(config, settings.environment()) == settings
    with pytest.raises(SettingsError, match="would be sent to every device"):
        DeploySettings.of({**config, "db": db})


def test_a_device_never_reads_a_scenario_path(tmp_path):  # issue 13, finding 7
    from deploy.node import NodeConfigError, scenario_text

    secret = tmp_path / "secret.toml"
    secret.write_text("x = 1\n")
    for value in (str(secret), "/dev/zero", "~/.ssh/id_rsa"):
        with pytest.raises(NodeConfigError, match="not a path"):
            scenario_text(value)
    with pytest.raises(NodeConfigError, match="exceeds"):
        scenario_text("x = 1\n" * 200_000)
    run_config = {"scenario": str(EXAMPLE), "connect-timeout": 5}  # the server reads it ...
    with pytest.raises(RoundFailed, match="not a path"):  # ... the nodes refuse to
        serverapp.run_deployment(grid_of(run_config, digits_nodes()), DeploySettings.of(run_config))


def test_a_population_cannot_be_deployed():
    text = EXAMPLE.read_text() + '\n[population]\ndevices = { "rpi-4-2gb" = 100 }\n'
    with pytest.raises(SettingsError, match="population"):
        serverapp.load_deployable(text)


@pytest.mark.parametrize(
    "config, needle",
    [
        ({}, "'scenario' is empty"),
        ({"scenario": "/no/such/scenario.toml"}, "cannot read"),
        ({"scenario": "/dev/zero"}, "too large"),  # read with a bound, even on the server
        ({"scenario": "x = 1\n", "db": "sqlite:///x.db"}, "would be sent to every device"),
        ({"scenario": "x = 1\n", "round-timeout": "soon"}, "round-timeout must be a number"),
        ({"scenario": "x = 1\n", "connect-timeout": -1}, "connect-timeout must be >= 0"),
    ],
)
def test_bad_run_configs_name_the_key(config, needle):
    with pytest.raises(SettingsError, match=needle):
        DeploySettings.of(config)


def test_the_app_folder_is_a_valid_flower_app_carrying_the_run_config(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    settings = DeploySettings(
        scenario=EXAMPLE.read_text(), db="sqlite:////tmp/x.db", run_id=4, round_timeout=None
    )
    folder = write_app(tmp_path / "app", settings.run_config())
    config, warnings = load_and_validate(folder / "pyproject.toml")
    assert warnings == []
    assert config["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "deploy.serverapp:app",
        "clientapp": "deploy.clientapp:app",
    }
    assert config["project"]["dependencies"] == []  # nothing for uv to install
    carried = config["tool"]["flwr"]["app"]["config"]
    assert DeploySettings.of(carried, settings.environment()) == settings
    assert "\\u007f" in pyproject({"scenario": "odd \x7f"})


def test_a_paused_deployed_run_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch):
    from simulations.lifecycle import StoredRun
    from simulations.prepare import prepare_scenario

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = Store(db)
    text = EXAMPLE.read_text()
    run_id = StoredRun.create(  # as `fedcore server` records it before submitting
        store, prepare_scenario(serverapp.load_deployable(text)), serverapp.RUNTIME
    ).run_id
    settings = DeploySettings(scenario=text, db=db, run_id=run_id, connect_timeout=5)

    def pause_after_round_1(outcome):
        if outcome.number == 1:
            store.queue_control(run_id, "pause")

    monkeypatch.setattr(serverapp, "log_round", pause_after_round_1)
    deploy_in_process(settings, digits_nodes())
    paused = store.get_run(run_id)
    assert paused.status == "paused" and [r.number for r in paused.rounds] == [1]

    monkeypatch.undo()
    store.claim_run(run_id, serverapp.RUNTIME)  # what `fedcore server --resume` does
    deploy_in_process(settings, digits_nodes())
    run = store.get_run(run_id)
    assert run.status == "completed" and [r.number for r in run.rounds] == [1, 2]
    simulated = run_scenario(load_scenario(EXAMPLE))
    np.testing.assert_array_equal(store.load_checkpoint(run_id)[1].params, simulated.final)
