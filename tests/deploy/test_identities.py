"""Device identities for SecAgg+ in a deployment: certify, enrol, bundle, load, admit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

from aggregator.store import Store
from aggregator.store.enrolment import enroll, register_node, revoke
from cli.main import app
from client_runtime.secagg_app import node_credentials
from deploy.bundle import BundleSpec, write_bundle
from deploy.certs import create_certificates
from deploy.enrolment import admit_identity
from deploy.keys import generate_node_keys
from fedcore import protocol
from fedcore.secagg.identity import Authority, Identity, InvalidIdentity
from tests.deploy.fleet import example, loopback_address, needs_flower

runner = CliRunner()


@pytest.fixture
def setup(tmp_path):
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"])
    keys = {name: generate_node_keys(tmp_path / name) for name in ("a", "b")}
    return tmp_path, certs, keys


def certify(tmp_path, certs, keys, name, key="a", out=None):
    out = out or tmp_path / f"{name}.identity.pem"
    result = runner.invoke(app, [
        "clients", "certify", name, "--public-key", str(keys[key][1]),
        "--ca-key", str(certs.ca_key), "--out", str(out),
    ])  # fmt: skip
    return result, out


def test_a_certified_identity_loads_and_passes_the_ca(setup):
    tmp_path, certs, keys = setup
    result, out = certify(tmp_path, certs, keys, "dev-a")
    assert result.exit_code == 0, result.output
    identity = Identity.load(keys["a"][0], out)  # the OpenSSH key keygen wrote
    authority = Authority.from_pem(certs.ca_cert.read_bytes())
    peer = authority.verify(identity.cert)
    assert peer.name == identity.name == "dev-a"
    peer.verify(identity.sign(b"x"), b"x", "test")
    tls = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    with pytest.raises(InvalidIdentity, match="device identity"):
        authority.verify(tls.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ValueError, match="certifies another key"):
        Identity.load(keys["b"][0], out)


def test_certify_mistakes_are_one_line_exit_2(setup):
    tmp_path, certs, keys = setup
    _, out = certify(tmp_path, certs, keys, "dev-a")
    again, _ = certify(tmp_path, certs, keys, "dev-a", out=out)
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    wrong = runner.invoke(app, [
        "clients", "certify", "dev-a", "--public-key", str(keys["a"][1]),
        "--ca-key", str(certs.server_key), "--out", str(tmp_path / "x.pem"),
    ])  # fmt: skip
    assert wrong.exit_code == 2 and "is not the key of" in wrong.output
    assert "Traceback" not in wrong.output
    bad = runner.invoke(app, [
        "clients", "certify", "no spaces", "--public-key", str(keys["a"][1]),
        "--ca-key", str(certs.ca_key), "--out", str(tmp_path / "y.pem"),
    ])  # fmt: skip
    assert bad.exit_code == 2


def test_enroll_with_the_ca_key_writes_the_identity(setup, tmp_path):
    _, certs, keys = setup
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    out = tmp_path / "dev-a.pem"
    result = runner.invoke(app, [
        "clients", "enroll", "dev-a", "--public-key", str(keys["a"][1]), "--ca-key",
        str(certs.ca_key), "--identity-out", str(out), "--db", db, "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["identity"] == str(out)
    assert Identity.load(keys["a"][0], out).name == "dev-a"


def test_a_node_config_names_its_identity_and_a_bundle_carries_it(setup):
    tmp_path, certs, keys = setup
    _, out = certify(tmp_path, certs, keys, "dev-a")
    config = {
        protocol.IDENTITY_KEY: str(keys["a"][0]),
        protocol.IDENTITY_CERT: str(out),
        protocol.IDENTITY_CA: str(certs.ca_cert),
    }
    context = Context(1, 7, config, RecordDict(), {})
    credentials = node_credentials(context)
    assert credentials is not None and credentials.identity.name == "dev-a"
    assert node_credentials(Context(1, 7, {}, RecordDict(), {})) is None
    partial = Context(1, 7, {protocol.IDENTITY_KEY: str(keys["a"][0])}, RecordDict(), {})
    with pytest.raises(ValueError, match="or none"):
        node_credentials(partial)
    foreign = create_certificates(tmp_path / "other", ["127.0.0.1"]).ca_cert
    context = Context(1, 7, {**config, protocol.IDENTITY_CA: str(foreign)}, RecordDict(), {})
    with pytest.raises(InvalidIdentity):
        node_credentials(context)

    spec = BundleSpec("dev-a", "127.0.0.1:9092", "rpi-4-2gb", 2**30, identity=True)
    written = write_bundle(tmp_path / "bundle", spec, certs.ca_cert, identity=out)
    assert tmp_path / "bundle" / "identity.pem" in written
    unit = (tmp_path / "bundle" / "fedcore-client.service").read_text()
    assert "--identity ${FEDCORE_IDENTITY}" in unit
    assert "FEDCORE_IDENTITY=/etc/fedcore/identity.pem" in (
        tmp_path / "bundle" / "fedcore-client.env"
    ).read_text()
    assert "--identity" in (tmp_path / "bundle" / "termux-start.sh").read_text()


def test_fedcore_client_checks_its_identity_before_joining(setup):
    tmp_path, certs, keys = setup
    _, out = certify(tmp_path, certs, keys, "dev-a")
    base = ["client", "--superlink", "127.0.0.1:1", "--dataset", "digits", "--partition-id", "0",
            "--root-certificates", str(certs.ca_cert)]
    wrong_key = runner.invoke(app, [*base, "--key", str(keys["b"][0]), "--identity", str(out)])
    assert wrong_key.exit_code == 2 and "certifies another key" in wrong_key.output
    no_key = runner.invoke(app, [*base, "--identity", str(out)])
    assert no_key.exit_code == 2 and "needs --key" in no_key.output


def test_the_lean_agent_takes_the_same_identity_and_models_options(setup, capsys):
    from deploy.agent import USAGE, local_values, main

    tmp_path, certs, keys = setup
    _, out = certify(tmp_path, certs, keys, "dev-a")
    values = local_values(out, keys["a"][0], certs.ca_cert, tmp_path)
    assert values[protocol.IDENTITY_CERT] == str(out.resolve())
    assert values[protocol.MODELS_DIR] == str(tmp_path.resolve())
    base = ["--superlink", "127.0.0.1:1", "--dataset", "digits", "--partition-id", "0",
            "--root-certificates", str(certs.ca_cert)]
    assert main([*base, "--key", str(keys["b"][0]), "--identity", str(out)]) == USAGE
    assert "certifies another key" in capsys.readouterr().err
    assert main([*base, "--models", str(tmp_path / "none")]) == USAGE
    assert "--models: no such folder" in capsys.readouterr().err


def test_the_enrolment_admits_only_the_nodes_own_unrevoked_identity(setup, tmp_path):
    _, certs, keys = setup
    store = Store(str(tmp_path / "runs.db"), create=True)
    run = store.create_run("r", "deployment", 1, {})
    for i, name in enumerate("ab"):
        key = keys[name][2]
        enroll(store, f"dev-{name}", key.openssh, key.fingerprint, i, None)
        register_node(store, run, f"dev-{name}", 100 + i)
    authority = Authority.from_pem(certs.ca_cert.read_bytes())
    peers = {}
    for name in "ab":
        _, out = certify(tmp_path, certs, keys, f"dev-{name}", key=name)
        peers[name] = authority.verify(Identity.load(keys[name][0], out).cert)
    _, stolen = certify(tmp_path, certs, keys, "dev-b", key="a", out=tmp_path / "stolen.pem")
    admit = admit_identity(store, run)
    assert admit(100, peers["a"]) is None
    assert "enrolled as 'dev-a'" in admit(100, peers["b"])
    assert "not an enrolled device" in admit(999, peers["a"])
    other_key = authority.verify(Identity.load(keys["a"][0], stolen).cert)  # dev-b, a's key
    assert "not the one" in admit(101, other_key)
    revoke(store, "dev-a")
    assert "revoked" in admit(100, peers["a"])


def test_the_server_needs_the_ca_for_identities(tmp_path):
    scenario = Path(__file__).parents[2] / "deploy" / "examples" / "digits.toml"
    text = scenario.read_text() + "\n[secagg]\nidentities = true\n"
    path = tmp_path / "s.toml"
    path.write_text(text)
    result = runner.invoke(app, ["server", str(path), "--db", f"sqlite:///{tmp_path}/r.db"])
    assert result.exit_code == 2 and "secagg.identities: needs --certs" in result.output


@pytest.mark.slow
@needs_flower
def test_enrolled_devices_with_identities_run_secure_aggregation_with_the_checks(fleet, tmp_path):
    """Real processes: SuperLink over TLS, three enrolled devices each with its identity (two
    lean agents, one stock SuperNode); the run completes with every device in the sum (a
    device with an identity refuses a round without the checks, so the round ran them)."""
    certs = create_certificates(tmp_path / "certs", ["127.0.0.1"])
    db = tmp_path / "runs.db"
    store = Store(str(db), create=True)
    keys, identities = {}, {}
    for i in range(3):
        keys[i] = generate_node_keys(tmp_path / f"k{i}")
        enroll(store, f"dev-{i}", keys[i][2].openssh, keys[i][2].fingerprint, i, None)
        identities[i] = tmp_path / f"dev-{i}.pem"
        result = runner.invoke(app, [
            "clients", "certify", f"dev-{i}", "--public-key", str(keys[i][1]),
            "--ca-key", str(certs.ca_key), "--out", str(identities[i]),
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
    text = example(num_clients=3, clients_per_round=3, rounds=1)
    scenario = tmp_path / "secure.toml"
    scenario.write_text(text + "\n[secagg]\nk = 2\nt = 2\nidentities = true\n")
    address = loopback_address()
    server = fleet.server(
        "server", scenario, address, db, "--certs", str(certs.ca_cert.parent),
        "--connect-timeout", "120", "--round-timeout", "60",
        "--logs", str(tmp_path / "server-logs"), devices=3,
    )  # fmt: skip
    devices = [
        fleet.device(
            f"d{i}", address, "--dataset", "digits", "--partition-id", str(i),
            "--num-partitions", "3", "--max-wait", "2", "--root-certificates",
            str(certs.ca_cert), "--key", str(keys[i][0]), "--identity", str(identities[i]),
            *(["--stock-supernode"] if i == 2 else []),
        )  # fmt: skip
        for i in range(3)
    ]
    assert server.wait(timeout=300) == 0, fleet.output("server")
    summary = json.loads(fleet.output("server").split("\n")[0])
    assert summary["status"] == "completed" and summary["rounds"] == 1
    run = Store(str(db)).get_run(summary["run_id"])
    assert all(c.accepted for r in run.rounds for c in r.clients), [
        c.reason for r in run.rounds for c in r.clients
    ]
    assert all(len(r.clients) == 3 for r in run.rounds)
    for i, device in enumerate(devices):
        assert device.wait(timeout=60) == 0, fleet.output(f"d{i}")


def test_a_bundle_with_a_generated_key_gets_its_identity_issued(setup):
    tmp_path, certs, _ = setup
    out = tmp_path / "bundle-g"
    result = runner.invoke(app, [
        "clients", "bundle", "--name", "dev-g", "--superlink", "127.0.0.1:9092", "--device",
        "rpi-4-2gb", "--ca", str(certs.ca_cert), "--out", str(out), "--generate-key",
        "--ca-key", str(certs.ca_key),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    identity = Identity.load(out / "node.key", out / "identity.pem")
    assert identity.name == "dev-g"
    Authority.from_pem(certs.ca_cert.read_bytes()).verify(identity.cert)
    assert "--identity" in (out / "fedcore-client.service").read_text()
    wrong = runner.invoke(app, [
        "clients", "bundle", "--name", "dev-h", "--superlink", "127.0.0.1:9092", "--device",
        "rpi-4-2gb", "--ca", str(certs.ca_cert), "--out", str(tmp_path / "h"),
        "--generate-key", "--ca-key", str(certs.server_key),
    ])  # fmt: skip
    assert wrong.exit_code == 2 and "is not the key of" in wrong.output
    assert not (tmp_path / "h").exists()  # nothing written
