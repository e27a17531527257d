"""The lean device agent against a real ``flower-superlink`` 1.42 with TLS and node auth.

``fedcore server --certs`` on loopback (TLS, Flower's SuperNode authentication, enrolled keys
registered); four ``fedcore-device`` agents and one stock ``fedcore client
--stock-supernode`` train three rounds together, plain and with SecAgg+. In the plain run the
lean agent is also refused as it should be: an unenrolled key, a wrong CA and no TLS against
a TLS server are refused before joining, and a sixth, enrolled agent revoked during the run is
refused from its next request while the run goes on with the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from aggregator.store import Store
from aggregator.store.enrolment import enroll, revoke
from deploy.certs import create_certificates
from deploy.keys import generate_node_keys
from tests.deploy.fleet import Fleet, example, loopback_address, needs_flower

pytestmark = [pytest.mark.slow, needs_flower]

LEAN, STOCK = ("a", "b", "c", "d"), "s"
REFUSED, USAGE = 1, 2


def agent(fleet: Fleet, name: str, *args: str) -> subprocess.Popen:
    """``fedcore-device ARGS`` (``python -m deploy.agent``)."""
    return fleet.spawn(name, [sys.executable, "-m", "deploy.agent", *args])


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


@pytest.mark.parametrize("secagg", [False, True], ids=["plain", "secagg"])
def test_lean_agents_and_a_stock_supernode_train_together(fleet, tmp_path, secagg):
    names = [*LEAN, STOCK] + ([] if secagg else ["r"])  # r: revoked during the plain run
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"])
    other_ca = create_certificates(tmp_path / "other", ["127.0.0.1"]).ca_cert
    keys = {name: generate_node_keys(tmp_path / f"key-{name}") for name in [*names, "x"]}
    db = tmp_path / "runs.db"
    store = Store(str(db), create=True)
    n = len(names)
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(example(num_clients=n, clients_per_round=n, rounds=3, secagg=secagg))
    for i, name in enumerate(names):
        key = keys[name][2]
        enroll(store, f"dev-{name}", key.openssh, key.fingerprint, i, None)
    address = loopback_address()
    server = fleet.server(
        "server", scenario, address, db, "--certs", str(certs.ca_cert.parent),
        "--connect-timeout", "120", "--round-timeout", "60", "--logs",
        str(tmp_path / "server-logs"), devices=n,
    )  # fmt: skip

    def data(name: str) -> list[str]:
        part = names.index(name) if name in names else 0
        return ["--dataset", "digits", "--partition-id", str(part), "--num-partitions", str(n)]

    tls = ["--root-certificates", str(certs.ca_cert)]
    devices = {
        name: agent(fleet, name, "--superlink", address, *data(name), *tls, "--key",
                    str(keys[name][0]), "--max-wait", "3")
        for name in names if name != STOCK
    }  # fmt: skip
    devices[STOCK] = fleet.device(
        STOCK, address, "--stock-supernode", *data(STOCK), *tls, "--key", str(keys[STOCK][0]),
        "--max-wait", "3",
    )  # fmt: skip

    if not secagg:  # the lean agent's refusals, while the enrolled devices join
        stranger = agent(fleet, "x", "--superlink", address, *data("x"), *tls, "--key",
                         str(keys["x"][0]), "--max-wait", "3")  # fmt: skip
        assert stranger.wait(timeout=90) == REFUSED, fleet.output("x")
        assert "refused this device's key" in fleet.output("x")
        wrong_ca = agent(fleet, "wrong-ca", "--superlink", address, *data("x"),
                         "--root-certificates", str(other_ca))  # fmt: skip
        assert wrong_ca.wait(timeout=60) == USAGE, fleet.output("wrong-ca")
        assert "is not trusted with" in fleet.output("wrong-ca")
        plain = agent(fleet, "plain", "--superlink", address, *data("x"))
        assert plain.wait(timeout=60) == USAGE, fleet.output("plain")
        assert "speaks TLS: give --root-certificates" in fleet.output("plain")

        def rounds() -> list:
            return Store(str(db)).get_run(1).rounds

        wait_until(lambda: len(rounds()) >= 1, 240, f"no round 1:\n{fleet.output('server')}")
        revoke(store, "dev-r")
        assert devices["r"].wait(timeout=120) == REFUSED, fleet.output("r")
        assert "refused this device's key" in fleet.output("r")

    assert server.wait(timeout=420) == 0, fleet.output("server")
    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 3, summary
    run = Store(str(db)).get_run(summary["run_id"])
    stayed = {names.index(name) for name in [*LEAN, STOCK]}  # all but the revoked one
    accepted = [{c.client_id for c in r.clients if c.accepted} - {names.index("r")}
                if "r" in names else {c.client_id for c in r.clients if c.accepted}
                for r in run.rounds]
    detail = [[(c.client_id, c.accepted, c.reason) for c in r.clients] for r in run.rounds]
    assert accepted == [stayed] * 3, detail
    assert run.rounds[-1].test_accuracy > 0.8
    if not secagg:
        assert sorted(c.client_id for c in run.rounds[0].clients) == list(range(len(names)))
        log = fleet.output("server")
        assert "revoked dev-r (node " in log and "the SuperLink refuses it now" in log, log
        fingerprint = keys["x"][2].fingerprint
        assert f"refused a device with key {fingerprint} (not enrolled)" in log, log
    for name, device in devices.items():  # the SuperLink is gone: each device leaves
        if name != "r":
            assert device.wait(timeout=60) == 0, fleet.output(name)
