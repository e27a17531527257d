"""Enrolled devices over TLS on loopback, as real processes: who joins, who is refused.

One device runs from its bundle (``fedcore clients bundle``): the Termux start script with the
bundle's key, CA and settings, as it would on a phone.

``fedcore server --certs`` starts the SuperLink with TLS and Flower's SuperNode authentication
and registers the enrolled keys; three enrolled devices train; an unenrolled key, a second
device with an enrolled key, a wrong CA and a device without TLS are refused with one line
each; a device revoked during the run is unregistered and left out of later rounds while the
run goes on with the others.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aggregator.store import Store
from aggregator.store.enrolment import enroll, revoke
from cli.main import app
from deploy.bundle import BundleSpec, write_bundle
from deploy.certs import create_certificates
from deploy.keys import generate_node_keys, read_public_key
from deploy.node import NodeData
from deploy.processes import free_port
from device_profiles import get_profile
from tests.deploy.fleet import Fleet, example, needs_flower

pytestmark = [pytest.mark.slow, needs_flower]

REFUSED = 1  # fedcore client's exit code when the SuperLink refuses its key
USAGE = 2


def start_script(fleet: Fleet, script: Path, name: str) -> subprocess.Popen:
    """Run a bundle's start script with ``fedcore-device`` being this checkout's agent."""
    wrapper = fleet.tmp_path / "fedcore-device"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m deploy.agent "$@"\n')
    wrapper.chmod(0o755)
    env = {"FEDCORE_AGENT": str(wrapper), "FEDCORE_PYTHON": sys.executable, "FEDCORE_MAX_WAIT": "2"}
    return fleet.spawn(name, ["sh", str(script)], env)


def control_call(port: int, ca: Path) -> bytes:
    """``POST /v1/control/list-runs`` over TLS to the public port; the raw response."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                b"POST /v1/control/list-runs HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/protobuf\r\nContent-Length: 0\r\n\r\n"
            )
            return tls.recv(4096)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_only_enrolled_devices_join_and_a_revoked_one_leaves(fleet, tmp_path):
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"])
    other_ca = create_certificates(tmp_path / "other", ["127.0.0.1"]).ca_cert
    keys = {name: generate_node_keys(tmp_path / name) for name in ("a", "c", "x")}
    db = tmp_path / "runs.db"
    store = Store(str(db), create=True)
    scenario = tmp_path / "three.toml"
    text = example(num_clients=3, clients_per_round=3, rounds=4)
    scenario.write_text(text)
    port = free_port()
    address = f"127.0.0.1:{port}"  # the devices connect here; the server listens on all
    # dev-b runs from its bundle's Termux start script, with its own data file and key
    bundle = tmp_path / "bundle-b"
    memory = get_profile("rpi-4-2gb").memory_budget_bytes
    spec = BundleSpec("dev-b", address, "rpi-4-2gb", memory)
    write_bundle(bundle, spec, certs.ca_cert, generate_key=True)
    keys["b"] = (bundle / "node.key", bundle / "node.pub", read_public_key(bundle / "node.pub"))
    x, y = NodeData(dataset="digits", partition_id=1, num_partitions=3).load({"scenario": text})
    np.savez(bundle / "data.npz", x=x, y=y)
    classes = {"a": "jetson-nano", "b": "rpi-zero-2w", "c": None}  # dev-b reports rpi-4-2gb
    for i, name in enumerate("abc"):
        key = keys[name][2]
        enroll(store, f"dev-{name}", key.openssh, key.fingerprint, i, classes[name])
    server = fleet.server(
        "server", scenario, f"0.0.0.0:{port}", db, "--certs", str(certs.ca_cert.parent),
        "--connect-timeout", "120", "--round-timeout", "30",
        "--logs", str(tmp_path / "server-logs"), devices=3,
    )  # fmt: skip

    def device(name: str, key: str, *extra: str):
        return fleet.device(
            name, address, "--dataset", "digits", "--partition-id", str("abcx".index(key) % 3),
            "--num-partitions", "3", "--max-wait", "2", "--key", str(keys[key][0]), *extra,
        )  # fmt: skip

    # off loopback only the Fleet API is public: Flower's Control API is not reachable
    control = control_call(port, certs.ca_cert)
    assert control.startswith(b"HTTP/1.1 403"), control

    tls = ("--root-certificates", str(certs.ca_cert))
    devices = {name: device(name, name, *tls) for name in "ac"}
    devices["b"] = start_script(fleet, bundle / "termux-start.sh", "b")
    stranger = device("x", "x", *tls)
    assert stranger.wait(timeout=90) == REFUSED, fleet.output("x")
    assert "refused this device's key" in fleet.output("x")

    wrong_ca = device("wrong-ca", "x", "--root-certificates", str(other_ca))
    assert wrong_ca.wait(timeout=60) == USAGE
    assert "is not trusted with" in fleet.output("wrong-ca")
    plain = fleet.device("plain", address, "--dataset", "digits", "--partition-id", "0")
    assert plain.wait(timeout=60) == USAGE
    assert "speaks TLS: give --root-certificates" in fleet.output("plain")

    def rounds() -> list:
        return Store(str(db)).get_run(1).rounds

    wait_until(lambda: len(rounds()) >= 1, 180, f"no round 1:\n{fleet.output('server')}")
    revoke(store, "dev-c")
    committed = len(rounds())  # the round after these may have selected dev-c already
    assert committed <= 2
    twin = device("twin", "a", *tls)  # dev-a's key on a second device while dev-a is online
    assert twin.wait(timeout=90) == REFUSED, fleet.output("twin")
    assert server.wait(timeout=240) == 0, fleet.output("server")

    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 4
    run = Store(str(db)).get_run(summary["run_id"])
    clients = [sorted(c.client_id for c in r.clients) for r in run.rounds]
    assert clients[0] == [0, 1, 2]
    assert all(ids == [0, 1] for ids in clients[committed + 1 :]), clients
    assert all(c.accepted for r in run.rounds for c in r.clients if c.client_id != 2)
    shown = CliRunner().invoke(app, ["rounds", "show", "1", "1", "--db", str(db), "--json"])
    named = {c["client_id"]: c["device_name"] for c in json.loads(shown.stdout)["clients"]}
    assert named == {0: "dev-a", 1: "dev-b", 2: "dev-c"}  # the server names devices
    recorded = {(c.client_id, c.device_class) for r in run.rounds for c in r.clients}
    assert recorded == {(0, "jetson-nano"), (1, "rpi-zero-2w"), (2, None)}  # enrolled classes
    # the round in flight at the revocation may have dev-c's reply already (a lean agent answers
    # within a second, before the SuperLink refuses it); any later entry of dev-c is a refusal
    late = [c for r in run.rounds[committed + 1 :] for c in r.clients if c.client_id == 2]
    assert all(not c.accepted and c.reason for c in late), [c.reason for c in late]
    log = fleet.output("server")
    fingerprint = keys["x"][2].fingerprint
    assert f"refused a device with key {fingerprint} (not enrolled)" in log, log
    twin_line = f"refused a device with key {keys['a'][2].fingerprint} (enrolled as dev-a)"
    assert twin_line in log and "already online" in log, log
    assert "revoked dev-c (node " in log and "the SuperLink refuses it now" in log, log
    for name in "ab":
        assert devices[name].wait(timeout=60) == 0, fleet.output(name)
