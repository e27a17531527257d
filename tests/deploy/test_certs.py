"""``deploy.certs``: the CA and server certificate, checked with openssl (not with our code)."""

import shutil
import subprocess

import pytest

from deploy.certs import CertError, create_certificates

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


@needs_openssl
def test_server_certificate_verifies_with_sans_and_usages(tmp_path):
    files = create_certificates(tmp_path / "c", ["server.example", "10.1.2.3"], days=30)
    assert "OK" in openssl("verify", "-CAfile", str(files.ca_cert), str(files.server_cert))
    text = openssl("x509", "-in", str(files.server_cert), "-noout", "-text")
    for expected in (
        "DNS:server.example",
        "IP Address:10.1.2.3",
        "IP Address:127.0.0.1",
        "DNS:localhost",
        "TLS Web Server Authentication",
        "Digital Signature",
        "CA:FALSE",
    ):
        assert expected in text, expected
    assert "Certificate Sign" not in text
    ca = openssl("x509", "-in", str(files.ca_cert), "-noout", "-text")
    assert "CA:TRUE, pathlen:0" in ca and "Certificate Sign, CRL Sign" in ca
    # validity: --days from now (openssl -checkend: still valid in 29 days, not in 31)
    subprocess.run(
        ["openssl", "x509", "-in", str(files.server_cert), "-noout", "-checkend", str(29 * 86400)],
        check=True,
    )
    late = subprocess.run(
        ["openssl", "x509", "-in", str(files.server_cert), "-noout", "-checkend", str(31 * 86400)],
        capture_output=True,
    )
    assert late.returncode == 1
    assert files.server_key.stat().st_mode & 0o777 == 0o600
    assert files.ca_key.stat().st_mode & 0o777 == 0o600


@needs_openssl
def test_another_ca_does_not_verify(tmp_path):
    one = create_certificates(tmp_path / "one", ["a.example"])
    two = create_certificates(tmp_path / "two", ["a.example"])
    wrong = subprocess.run(
        ["openssl", "verify", "-CAfile", str(two.ca_cert), str(one.server_cert)],
        capture_output=True,
    )
    assert wrong.returncode != 0


def test_refuses_to_overwrite_and_bad_input(tmp_path):
    create_certificates(tmp_path, ["a.example"])
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(CertError, match="refusing to overwrite"):
        create_certificates(tmp_path, ["a.example"])
    assert (tmp_path / "ca.key").read_bytes() == before
    for hosts, match in (([], "at least one"), (["bad_name!"], "neither"), (["-x.com"], "neither")):
        with pytest.raises(CertError, match=match):
            create_certificates(tmp_path / "new", hosts)
    with pytest.raises(CertError, match="--days"):
        create_certificates(tmp_path / "new", ["a.example"], days=0)
    with pytest.raises(CertError, match="cannot exceed"):
        create_certificates(tmp_path / "new", ["a.example"], days=100, ca_days=50)
    assert not (tmp_path / "new").exists()
