"""``deploy.processes`` with TLS: the arguments and connection file it writes, and a real
``flower-superlink`` started with them that serves TLS under the given certificate."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy import processes as p


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject, issuer, key, signer, ca: bool, ip: str | None = None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_tls(folder: Path, name: str = "ca") -> p.Tls:
    """A CA and a server certificate for 127.0.0.1 it signed, as PEM files."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(_name(name), _name(name), ca_key, ca_key, ca=True)
    cert = _certificate(_name("superlink"), _name(name), key, ca_key, ca=False, ip="127.0.0.1")
    pem = serialization.Encoding.PEM
    files = {f"{name}.pem": ca.public_bytes(pem), f"{name}-server.pem": cert.public_bytes(pem)}
    files[f"{name}-server.key"] = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for file, data in files.items():
        (folder / file).write_bytes(data)
    server = folder / f"{name}-server"
    return p.Tls(folder / f"{name}.pem", server.with_suffix(".pem"), server.with_suffix(".key"))


def test_tls_arguments_and_connection(tmp_path):
    tls = make_tls(tmp_path)
    args = p.superlink_args("127.0.0.1", 9092, tmp_path / "state.db", tls)
    assert "--insecure" not in args
    for option, path in (
        ("--ssl-ca-certfile", tls.ca_certfile),
        ("--ssl-certfile", tls.certfile),
        ("--ssl-keyfile", tls.keyfile),
    ):
        assert args[args.index(option) + 1] == str(path)
    assert "--insecure" in p.superlink_args("127.0.0.1", 9092, tmp_path / "state.db", None)
    kept = p.superlink_args("127.0.0.1", 9092, tmp_path / "state.db", None)
    assert kept[kept.index("--database") + 1] == str(tmp_path / "state.db")
    assert "--database" not in p.superlink_args("127.0.0.1", 9092, None, None)  # in memory

    node = p.supernode_args("127.0.0.1:9092", {"dataset": "digits"}, 9094, tls.ca_certfile)
    assert "--insecure" not in node
    assert node[node.index("--root-certificates") + 1] == str(tls.ca_certfile)
    assert "--insecure" in p.supernode_args("127.0.0.1:9092", {}, 9094, None)

    p.write_connection(tmp_path / "home", "127.0.0.1:9092", tls.ca_certfile)
    config = tomllib.loads((tmp_path / "home" / "config.toml").read_text())
    connection = config["superlink"][p.CONNECTION]
    assert config["superlink"]["default"] == p.CONNECTION
    assert connection["root-certificates"] == str(tls.ca_certfile.resolve())
    assert "insecure" not in connection
    p.write_connection(tmp_path / "plain", "127.0.0.1:9092", None)
    plain = tomllib.loads((tmp_path / "plain" / "config.toml").read_text())
    assert plain["superlink"][p.CONNECTION]["insecure"] is True


def _handshake(port: int, ca: Path) -> dict:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(p.flower_bin("flower-superlink")).exists(), reason="flower-superlink is not installed"
)
def test_a_superlink_started_with_tls_serves_its_certificate_and_no_other(tmp_path):
    tls = make_tls(tmp_path)
    other = make_tls(tmp_path, "other")  # a CA that signed nothing the SuperLink holds
    why = ""
    for attempt in range(3):  # a free port may be taken before the SuperLink binds it
        port = p.free_port()
        args = p.superlink_args("127.0.0.1", port, tmp_path / "state.db", tls)
        env = p.flower_env(tmp_path / "flwr-home")
        link = p.FlowerProcess("flower-superlink", args, env, tmp_path / f"link{attempt}.log")
        try:
            link.wait_listening("127.0.0.1", port)
        except p.ProcessError as exc:
            link.stop()
            why = str(exc)
            continue
        try:
            peer = _handshake(port, tls.ca_certfile)
            assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
            with pytest.raises(ssl.SSLCertVerificationError):
                _handshake(port, other.ca_certfile)
        finally:
            assert link.stop() is not None
        return
    pytest.fail(f"the SuperLink did not start in three tries: {why}")
