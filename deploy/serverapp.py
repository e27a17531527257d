"""``deploy.serverapp:app``: the ServerApp a SuperLink runs for a deployed scenario.

It reads the scenario and the store from ``context.run_config`` (``deploy.settings``), builds
what the simulation harness builds (data and test set, model, strategy, round config) and
runs the same ``aggregator.rounds.run_federation``: no client directory, so it waits for
``federation.num_clients`` nodes and asks each who it is (a ``query``). Each round is logged
(``flwr log`` / ``flwr run --stream`` show it) and, with a store, committed like a simulated
round, so ``fedcore runs`` and ``fedcore rounds`` show deployed runs too. A pause queued
while it waits for devices stops it there; a signal (the SuperLink stopping) leaves the run
``paused``, to be continued after its last committed round.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import replace
from logging import INFO

import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from aggregator.rounds import (
    FederationConfig,
    OnRound,
    RoundFailed,
    RoundOutcome,
    StopRun,
    run_federation,
    wait_for_nodes,
)
from deploy.settings import DeploySettings, SettingsError
from simulations.harness import Resume, server_side
from simulations.lifecycle import StoredRun, StoreHooks
from simulations.prepare import PreparedScenario, prepare_scenario
from simulations.scenario import Scenario, scenario_from_dict

RUNTIME = "deployment"  # the ``runtime`` a deployed run is stored with

app = ServerApp()


def load_deployable(text: str, source: str = "run config scenario") -> Scenario:
    """Parse and check a scenario for deployment (``ScenarioError`` / ``SettingsError``)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: invalid TOML: {exc}") from None
    return check_deployable(scenario_from_dict(raw, source=source), source)


def check_deployable(scenario: Scenario, source: str) -> Scenario:
    """``scenario`` if it can be deployed, else ``SettingsError`` (a simulated population)."""
    if scenario.population is not None:
        raise SettingsError(
            f"{source}: population: a simulated population cannot be deployed; real devices "
            "bring their own (remove [population])"
        )
    return scenario


def log_round(outcome: RoundOutcome) -> None:
    """One log line per finished round (what ``flwr run --stream`` shows)."""
    log(
        INFO,
        "fedcore round %d: %d/%d accepted, train loss %.4f, test accuracy %s, %.1f s",
        outcome.number,
        outcome.num_accepted,
        outcome.num_selected,
        outcome.train_loss,
        "-" if outcome.test_accuracy is None else f"{outcome.test_accuracy:.4f}",
        outcome.seconds,
    )


def run_deployment(grid: Grid, settings: DeploySettings) -> np.ndarray | None:
    """Run the scenario's rounds over ``grid`` (a SuperLink's); return the final model.

    With a store, the run goes through the stored-run lifecycle (``simulations.lifecycle.
    StoredRun``) like a simulated one: it ends ``completed``, ``failed`` (the error is
    re-raised) or, when an operator paused or aborted it, ``paused``/``aborted`` (then None is
    returned); stopped by a signal (Flower's handler exits with ``SystemExit``), it is left
    ``paused``. A stored ``run_id`` (recorded by ``fedcore server``) runs its own stored
    scenario, resumed after its last checkpoint if it has one.
    """
    if settings.db is None:
        prepared = prepare_scenario(load_deployable(settings.scenario))
        return _federate(grid, prepared, settings, None)
    from aggregator.store import NotOwner, Store

    store = Store(settings.db, checkpoints=settings.checkpoints)
    if settings.run_id is not None:
        # `fedcore server` has claimed it: the ServerApp writes only while that claim holds
        run = StoredRun.reopen(store, settings.run_id, owner=settings.run_owner)
        if run.resume is not None:
            log(INFO, "fedcore: resuming run %d after round %d", run.run_id, run.resume.round)
    else:
        run = StoredRun.create(store, prepare_scenario(load_deployable(settings.scenario)), RUNTIME)
    log(INFO, "fedcore: recording run %d in %s", run.run_id, store.url)
    try:
        return run.drive(
            lambda hooks: _federate(grid, run.prepared, settings, hooks, run.resume),
            log_round,
            stopped_by="the ServerApp was stopped",
        )
    except StopRun as stop:
        log(INFO, "fedcore: %s", stop)
        return None
    except NotOwner as stale:  # an orphan of a killed SuperLink, its run resumed elsewhere
        log(INFO, "fedcore: stopping, nothing more recorded: %s", stale)
        return None


def _federate(
    grid: Grid,
    prepared: PreparedScenario,
    settings: DeploySettings,
    hooks: StoreHooks | None,
    resume: Resume | None = None,
) -> np.ndarray:
    """The harness's server side (model, evaluation, strategy); then the round loop (from
    after ``resume.round`` with its model and server state, when resuming)."""
    config = replace(
        prepared.config,
        connect_timeout=settings.connect_timeout,
        timeout=settings.round_timeout,
    )
    first_round = 1 if resume is None else resume.round + 1
    server = server_side(prepared, settings.array_backend)
    initial = server.initial
    if resume is not None:
        initial = resume.params
        server.strategy.load_state_dict(resume.server_state)
    if config.secagg is not None and config.secagg.require_identities:
        config = _with_identities(config, settings, hooks)
    if settings.enrolled:
        directory = _enrolled_directory(grid, config, hooks, first_round)
        config = replace(config, directory=directory)
    elif hooks is not None:
        config = _await_devices(grid, config, hooks, first_round)

    def before_round(number: int, config: FederationConfig) -> FederationConfig:
        if hooks is not None:
            config = hooks.before_round(number, config)
        log(INFO, "fedcore round %d starts", number)
        return config

    on_round = log_round if hooks is None else hooks.record
    if settings.enrolled and hooks is not None:
        on_round = _enrolled_classes(on_round, hooks)
    return run_federation(
        grid,
        config,
        initial,
        server.strategy,
        server.evaluate,
        on_round,
        first_round=first_round,
        before_round=before_round,
        resume_state=None if resume is None else resume.server_state,
    )


def _enrolled_directory(
    grid: Grid, config: FederationConfig, hooks: StoreHooks | None, first_round: int
):
    """The round loop's clients: enrolled devices registered for this stored run (a pause or
    abort queued while they are awaited stops the run there)."""
    from aggregator.store.enrolment import registered_nodes
    from deploy.enrolment import EnrolledDirectory

    if hooks is None:
        raise SettingsError("run config: enrolled devices need a stored run (db and run-id)")
    store, run_id = hooks.store, hooks.run_id
    return EnrolledDirectory(
        grid,
        lambda: registered_nodes(store, run_id),
        config.min_nodes or config.clients_per_round,
        config.connect_timeout,
        on_wait=lambda: hooks.stop_if_asked(first_round, config),
    )


def _with_identities(
    config: FederationConfig, settings: DeploySettings, hooks: StoreHooks | None
) -> FederationConfig:
    """SecAgg+ with identities: checked against the operator's CA and, for enrolled devices,
    against the enrolment (the certificate names the node's device, unrevoked)."""
    from pathlib import Path

    from aggregator.secagg.keybook import Identities
    from deploy.enrolment import admit_identity
    from fedcore.secagg.identity import Authority

    if settings.identity_ca is None:
        raise SettingsError(
            "secagg.identities = true: the server needs the CA that issued the devices' "
            "identity certificates (fedcore server --certs DIR)"
        )
    try:
        authority = Authority.from_pem(Path(settings.identity_ca).read_bytes()[:65536])
    except (OSError, ValueError) as exc:
        raise SettingsError(f"identity CA {settings.identity_ca}: {exc}") from None
    admit = None
    if settings.enrolled and hooks is not None:
        admit = admit_identity(hooks.store, hooks.run_id)
    secagg = replace(config.secagg, identities=Identities(authority, admit))  # type: ignore[arg-type]
    return replace(config, secagg=secagg)


def _enrolled_classes(record: OnRound, hooks: StoreHooks) -> OnRound:
    """Record each enrolled client under its enrolled device class, not the one it reports."""
    from aggregator.store.enrolment import registered_nodes

    def on_round(outcome: RoundOutcome) -> None:
        devices = registered_nodes(hooks.store, hooks.run_id)
        outcome.clients = [
            replace(c, device_class=devices[c.node_id].device_class)
            if c.node_id in devices and devices[c.node_id].device_class
            else c
            for c in outcome.clients
        ]
        record(outcome)

    return on_round


def _await_devices(
    grid: Grid, config: FederationConfig, hooks: StoreHooks, first_round: int, poll: float = 0.5
) -> FederationConfig:
    """Wait for the devices as the round loop would, applying a pause or abort queued
    meanwhile (``fedcore server`` interrupted, ``fedcore runs pause``) instead of waiting on;
    the config returned has what is left of the connect timeout."""
    need = config.min_nodes or config.clients_per_round
    deadline = time.monotonic() + config.connect_timeout
    while True:
        hooks.stop_if_asked(first_round, config)
        left = deadline - time.monotonic()
        try:
            wait_for_nodes(grid, need, timeout=min(poll, max(left, 0.0)))
        except RoundFailed:
            if left > poll:
                continue
            raise RoundFailed(
                f"only {len(list(grid.get_node_ids()))} of the {need} nodes needed "
                f"connected within {config.connect_timeout:g} s"
            ) from None
        return replace(config, connect_timeout=max(left, poll))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: the settings come from the run config; a SuperLink's replies are
    collected promptly (``deploy.prompt_grid``), not every 3 s."""
    from deploy.prompt_grid import prompt

    run_deployment(prompt(grid), DeploySettings.of(context.run_config))
