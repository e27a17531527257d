"""``fedcore server SCENARIO``: a real Flower SuperLink running the scenario on real devices.

It checks the scenario and the store, records a new run (runtime ``deployment``), starts
``flower-superlink`` (no runtime ``uv sync``; logs and the app in a work folder, its state in
memory, or in that folder with ``--logs``),
writes the Flower App (``deploy.appdir``) and submits it with ``flwr run --stream``. The
ServerApp commits each round to the store; this command shows them as they land and stops
the SuperLink when the run ends or fails. An interrupt (Ctrl-C, SIGTERM, SIGHUP) queues a pause
that the ServerApp applies at the next round boundary (or at once while it waits for devices);
a second one stops everything at once. Either way the run is ``paused`` and ``--resume``
continues it from its last committed round.

With certificates the SuperLink authenticates devices by their enrolled keys
(``deploy.enrolment``); off loopback it needs certificates or ``--insecure``, and listens on
loopback behind the Fleet-only gateway (``deploy.gateway``) unless ``--public-control-api``.
The processes themselves are ``cli.deployment``'s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.deployment import Deployment, StartError
from cli.errors import FAILED, err_console, fail, interrupted, stop_if_interrupted, stopped
from cli.live import RoundProgress, print_summary, run_summary
from cli.options import Db, Json, Sets, server_environment

if TYPE_CHECKING:
    from aggregator.store import Store
    from deploy.processes import Tls



def server(
    scenario: Annotated[
        Path, typer.Argument(help="Scenario file (TOML), e.g. deploy/examples/digits.toml.")
    ],
    address: Annotated[
        str,
        typer.Option(
            "--address",
            help="HOST:PORT the SuperLink listens on (devices and `flwr` connect here); "
            "0.0.0.0:PORT for devices on the network.",
        ),
    ] = "127.0.0.1:9092",
    db: Db = None,
    sets: Sets = None,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout", min=1, help="Seconds to wait for federation.num_clients devices."
        ),
    ] = 600.0,
    round_timeout: Annotated[
        float,
        typer.Option(
            "--round-timeout", min=0, help="Seconds a round waits for replies (0: no limit)."
        ),
    ] = 600.0,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="TLS: the SuperLink's certificate.")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="TLS: the SuperLink's private key.")
    ] = None,
    ssl_ca_certfile: Annotated[
        Path | None,
        typer.Option("--ssl-ca-certfile", help="TLS: the CA certificate that signed it."),
    ] = None,
    certs: Annotated[
        Path | None,
        typer.Option(
            "--certs",
            help="TLS from a `fedcore certs create` folder (ca.pem, server.pem, server.key); "
            "with TLS only enrolled devices join (`fedcore clients enroll`).",
        ),
    ] = None,
    public_control_api: Annotated[
        bool,
        typer.Option(
            "--public-control-api",
            help="Off loopback, let the SuperLink itself listen on --address, so Flower's "
            "Control and runtime APIs are reachable there too (default: they stay on "
            "loopback and only the Fleet API is public, through fedcore's gateway).",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Listen off loopback without TLS or enrolment: anyone who reaches the port "
            "joins, reads the run and can stop it. For trusted networks only.",
        ),
    ] = False,
    logs: Annotated[
        Path | None,
        typer.Option(
            "--logs",
            help="Keep the SuperLink's and `flwr run`'s logs, its state and the app in this "
            "folder (default: a temporary folder, kept only if the run fails; the SuperLink's "
            "state then stays in its memory, which is faster).",
        ),
    ] = None,
    as_json: Json = False,
    resume: Annotated[
        int | None,
        typer.Option(
            "--resume",
            min=1,
            help="Continue this stored deployed run (paused, or cut off) after its last "
            "committed round; give the run's own scenario file.",
        ),
    ] = None,
) -> None:
    """Run a scenario on real devices: start a Flower SuperLink and submit the scenario."""
    from aggregator.store import Store, StoreError, this_process
    from deploy.processes import port_in_use, split_address
    from deploy.serverapp import RUNTIME, check_deployable
    from deploy.settings import DeploySettings, SettingsError
    from simulations.interrupts import Interrupts
    from simulations.lifecycle import StoredRun
    from simulations.prepare import prepare_scenario
    from simulations.scenario import ScenarioError, load_scenario

    server_environment()
    try:
        host, port = split_address(address)
    except ValueError as exc:
        fail(f"--address: {exc}")
    tls = _server_tls(ssl_certfile, ssl_keyfile, ssl_ca_certfile, certs)
    _check_exposure(host, address, tls, insecure)
    interrupts = Interrupts(hint=f"`fedcore server {scenario} --resume {{run}}` continues it")
    interrupts.preparing = True  # Ctrl-C now: stop once prepared, nothing stored
    error: str | None = None
    try:
        with interrupts:
            try:
                spec = check_deployable(load_scenario(scenario, sets or ()), str(scenario))
                # the devices read the scenario: the file, or with --set the validated one
                text = (
                    json.dumps(spec.model_dump()) if sets else scenario.read_text(encoding="utf-8")
                )
                prepared = prepare_scenario(spec, source=str(scenario))
            except (ScenarioError, SettingsError) as exc:
                fail(str(exc))
            stop_if_interrupted(interrupts)
            secagg = prepared.config.secagg
            if secagg is not None and secagg.require_identities and tls is None:
                fail(
                    "secagg.identities: needs --certs DIR, the CA that issued the devices' "
                    "identities"
                )
            if port_in_use(host, port):
                fail(f"--address: {address} is in use (another SuperLink?); pick another port")
            try:
                store = Store(_absolute_db(db))
            except StoreError as exc:
                fail(str(exc))
            if resume is None:
                run_id = StoredRun.create(store, prepared, RUNTIME).run_id
            else:
                run_id = _claim_for_resume(store, resume, prepared)
            interrupts.run_id = run_id
            if tls is not None:
                _check_enrolled(store)
            settings = DeploySettings(
                enrolled=tls is not None,
                identity_ca=str(tls.ca_certfile) if tls is not None else None,
                scenario=text,
                db=store.url,
                checkpoints=str(store.checkpoint_root.expanduser().resolve()),
                run_id=run_id,
                run_owner=this_process(),  # created or claimed it above
                connect_timeout=connect_timeout,
                round_timeout=round_timeout or None,
            )
            work = (
                logs.resolve()
                if logs is not None
                else Path(tempfile.mkdtemp(prefix="fedcore-server-"))
            )
            work.mkdir(parents=True, exist_ok=True)
            fed = prepared.scenario.federation
            start = time.perf_counter()
            with Deployment(work, host, port, tls, public_control_api,
                            keep_state=logs is not None) as deployment:
                deployment.start(settings, store, run_id)
                _hint(address, prepared.scenario.data.dataset, fed.num_clients, tls)  # stderr
                title = f"{prepared.scenario.name} (deployment on {address})"
                with RoundProgress(title, fed.rounds, quiet=as_json) as ui:
                    error = deployment.follow(store, run_id, ui, interrupts)
            if deployment.lost_superlink:  # stopped above: the ServerApp with it
                _wait_until_finished(store, run_id)
                _pause_after_lost_superlink(store, run_id, deployment.lost_superlink)
    except KeyboardInterrupt:  # a second interrupt: everything was stopped on the way out
        if interrupts.run_id is not None:
            _wait_until_finished(store, run_id)  # the ServerApp records its own end if it can
            _finish_if_running(store, run_id, "paused", "interrupted: fedcore server was stopped")
        interrupted(interrupts)
    except StartError as exc:
        error = str(exc)
    _finish_if_running(store, run_id, "failed", error or "the ServerApp stopped early")
    run = store.get_run(run_id)
    if run.status == "failed":
        fail(f"run {run_id} failed: {run.error or error} (logs in {work})", code=FAILED)
    if run.status == "paused":
        why = f" ({run.error})" if run.error and not run.error.startswith("interrupted") else ""
        hint = interrupts.hint.format(run=run_id)
        stopped(f"run {run_id} paused{why}: {hint} (logs in {work})")
    if run.status == "aborted":
        stopped(f"run {run_id} aborted (logs in {work})")
    if logs is None:
        shutil.rmtree(work, ignore_errors=True)
    from simulations.reports import write_stored_report

    seconds = time.perf_counter() - start
    summary = {**run_summary(run, store.url, seconds), "address": address}
    folder = store.checkpoint_root / f"run-{run_id}" / "report"
    summary["report"] = [str(p) for p in write_stored_report(run, folder, seconds)]
    print_summary(summary, as_json)


def _claim_for_resume(store: Store, run_id: int, prepared: Any) -> int:
    """Take over stored deployed run ``run_id`` if the scenario given is its own; else fail."""
    from aggregator.store import StoreError
    from deploy.serverapp import RUNTIME

    try:
        run = store.get_run(run_id)
        if run.runtime != RUNTIME:
            fail(
                f"--resume: run {run_id} ran on the {run.runtime} runtime; "
                f"resume it with `fedcore runs resume {run_id}`"
            )
        if run.config != prepared.scenario.model_dump(mode="json"):
            fail(f"--resume: run {run_id} ran another scenario ({run.name!r}); give its own file")
        store.claim_run(run_id, RUNTIME)
    except StoreError as exc:
        fail(f"--resume: {exc}")
    return run_id


def _server_tls(
    certfile: Path | None, keyfile: Path | None, ca: Path | None, certs: Path | None
) -> Tls | None:
    """The SuperLink's certificates: none (insecure) or all three, each an existing file,
    given one by one or as a ``fedcore certs create`` folder."""
    from deploy.certs import CA_CERT, SERVER_CERT, SERVER_KEY
    from deploy.processes import Tls

    if certs is not None:
        if any((certfile, keyfile, ca)):
            fail("--certs: give either --certs or the three --ssl-* options, not both")
        if not certs.is_dir():
            fail(f"--certs: no such folder: {certs}")
        certfile, keyfile, ca = certs / SERVER_CERT, certs / SERVER_KEY, certs / CA_CERT
    given = {"--ssl-certfile": certfile, "--ssl-keyfile": keyfile, "--ssl-ca-certfile": ca}
    if not any(given.values()):
        return None
    for option, path in given.items():
        if path is None:
            fail(f"{option}: TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
        if not path.is_file():
            fail(f"{option}: no such file: {path}")
    assert certfile is not None and keyfile is not None and ca is not None
    return Tls(ca.resolve(), certfile.resolve(), keyfile.resolve())


def _check_exposure(host: str, address: str, tls: Tls | None, insecure: bool) -> None:
    """Off loopback the SuperLink needs TLS and enrolment, or an explicit ``--insecure``."""
    from deploy.processes import is_loopback

    if tls is not None or is_loopback(host):
        if insecure and tls is not None:
            fail("--insecure: cannot be combined with certificates")
        return
    if not insecure:
        fail(
            f"--address: {address} is reachable from the network: give --certs DIR "
            "(`fedcore certs create`) and enrol devices (`fedcore clients enroll`), or "
            "--insecure to let anyone who reaches the port join"
        )
    err_console.print(
        f"warning: --insecure on {address}: no TLS, no device authentication; anyone who "
        "reaches this port can join the run, read it or stop it",
        markup=False,
    )


def _check_enrolled(store: Store) -> None:
    """With TLS only enrolled devices join: there must be at least one."""
    from aggregator.store.enrolment import list_enrolled

    if not any(device.active for device in list_enrolled(store)):
        fail(
            "no enrolled devices in the store: with TLS only enrolled devices join; enrol "
            "each with `fedcore clients enroll NAME --public-key node.pub` (same --db)"
        )


def _absolute_db(db: str | None) -> str:
    """``--db`` with a SQLite path made absolute (the ServerApp runs in another folder)."""
    import os

    from aggregator.store import DB_ENV, DEFAULT_DB

    value = db or os.environ.get(DB_ENV) or DEFAULT_DB
    return value if "://" in value else str(Path(value).expanduser().resolve())


def _hint(address: str, dataset: str, devices: int, tls: Tls | None) -> None:
    """How to connect the devices the run waits for."""
    cert = " --root-certificates ca.pem --key node.key" if tls is not None else ""
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):  # devices need this machine's own address
        address = f"SERVER:{port}"
    err_console.print(
        f"SuperLink on {address}: waiting for {devices} device(s). On each device run:\n"
        f"  fedcore client --superlink {address}{cert} --dataset {dataset} "
        f"--partition-id I --num-partitions {devices}   (or --data FILE.npz)"
        + ("\n  (I: the device's enrolled partition, `fedcore clients list`)" if tls else "")
    )


def _wait_until_finished(store: Store, run_id: int, timeout: float = 5.0) -> None:
    """Give a stopping ServerApp ``timeout`` s to record how its run ended."""
    deadline = time.monotonic() + timeout
    while store.get_run(run_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)


def _pause_after_lost_superlink(store: Store, run_id: int, why: str) -> None:
    """A SuperLink that died under a run leaves it resumable: its committed rounds are whole,
    the round it was in is run again. The ServerApp may have recorded a failure first (its
    SuperLink stopped answering): that failure is this one. (Its log is in ``--logs``.)"""
    if store.get_run(run_id).status in ("running", "failed"):
        store.finish_run(run_id, "paused", error=why)


def _finish_if_running(store: Store, run_id: int, status: str, error: str) -> None:
    """Record how a run ended when the ServerApp could not (it died or never started)."""
    if store.get_run(run_id).status == "running":
        store.finish_run(run_id, status, error=error)
