"""`fedcore certs` and `fedcore clients` through Typer's test runner: files, one-line errors."""

import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_keygen_enroll_list_revoke(tmp_path):
    db = tmp_path / "s.db"
    for name in ("d1", "d2"):
        done = invoke("clients", "keygen", "--out", tmp_path / name, "--json")
        assert done.exit_code == 0, done.output
    again = invoke("clients", "keygen", "--out", tmp_path / "d1")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    pub1, pub2 = tmp_path / "d1" / "node.pub", tmp_path / "d2" / "node.pub"
    ok = invoke(
        "clients",
        "enroll",
        "pi-1",
        "--public-key",
        pub1,
        "--device",
        "rpi-4-2gb",
        "--db",
        db,
        "--json",
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["partition"] == 0
    for args, message in (
        (("pi-2", "--public-key", pub1), "already enrolled as 'pi-1'"),
        (("pi-2", "--public-key", pub2, "--partition", 0), "already 'pi-1''s shard"),
        (("pi-2", "--public-key", pub2, "--device-class", "toaster"), "--device-class"),
        (("pi-2", "--public-key", tmp_path / "nope.pub"), "no such file"),
    ):
        bad = invoke("clients", "enroll", *args, "--db", db)
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert "Traceback" not in bad.output
    assert invoke("clients", "enroll", "pi-2", "--public-key", pub2, "--db", db).exit_code == 0
    assert invoke("clients", "revoke", "pi-1", "--db", db).exit_code == 0
    twice = invoke("clients", "revoke", "pi-1", "--db", db)
    assert twice.exit_code == 2 and "already revoked" in twice.output
    listed = json.loads(invoke("clients", "list", "--db", db, "--json").stdout)
    assert [(c["name"], c["active"], c["device"]) for c in listed] == [
        ("pi-1", False, "rpi-4-2gb"),
        ("pi-2", True, None),
    ]


def test_certs_create_refuses_overwrite(tmp_path):
    done = invoke("certs", "create", "--out", tmp_path, "--host", "10.0.0.1", "--json")
    assert done.exit_code == 0, done.output
    assert set(json.loads(done.stdout)) == {"ca_cert", "ca_key", "server_cert", "server_key"}
    again = invoke("certs", "create", "--out", tmp_path, "--host", "10.0.0.1")
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    bad = invoke("certs", "create", "--out", tmp_path / "x", "--host", "no spaces")
    assert bad.exit_code == 2 and "--host" in bad.output


EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[2] / "deploy/examples/digits.toml"


def test_server_off_loopback_needs_certificates_or_insecure(tmp_path):
    exposed = invoke("server", EXAMPLE, "--address", "0.0.0.0:9", "--db", tmp_path / "s.db")
    assert (
        exposed.exit_code == 2
        and "--certs DIR" in exposed.output
        and "--insecure" in exposed.output
    )
    assert not (tmp_path / "s.db").exists()
    certs = tmp_path / "certs"
    assert invoke("certs", "create", "--out", certs, "--host", "127.0.0.1").exit_code == 0
    both = invoke("server", EXAMPLE, "--certs", certs, "--ssl-certfile", certs / "server.pem")
    assert both.exit_code == 2 and "not both" in both.output
    mixed = invoke("server", EXAMPLE, "--certs", certs, "--insecure", "--address", "0.0.0.0:9")
    assert mixed.exit_code == 2 and "--insecure" in mixed.output
    nobody = invoke("server", EXAMPLE, "--certs", certs, "--db", tmp_path / "s.db")
    assert nobody.exit_code == 2 and "no enrolled devices" in nobody.output


def test_client_check_offline(tmp_path):
    import numpy as np

    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=np.random.rand(20, 64).astype(np.float32), y=np.arange(20) % 10)
    np.savez(bad, x=np.zeros((20, 28, 28), np.float32), y=np.zeros(20, np.int64))
    fits = invoke("client", "--check", EXAMPLE, "--data", good)
    assert fits.exit_code == 0 and "data fits" in fits.output, fits.output
    wrong = invoke("client", "--check", EXAMPLE, "--data", bad)
    assert wrong.exit_code == 2 and "each example has shape (28, 28)" in wrong.output
    shard = invoke("client", "--check", EXAMPLE, "--dataset", "digits", "--partition-id", "1")
    assert shard.exit_code == 0 and "labels 0..9" in shard.output, shard.output
    nowhere = invoke("client", "--dataset", "digits", "--partition-id", "1")
    assert nowhere.exit_code == 2 and "--superlink" in nowhere.output
