"""``deploy.keys``: a device's key pair, in the formats Flower and ssh-keygen read."""

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
)

from deploy.keys import KeyFileError, generate_node_keys, parse_public_key, read_public_key


def test_keygen_writes_a_pair_flower_can_load(tmp_path):
    private, public, key = generate_node_keys(tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    loaded = load_ssh_private_key(private.read_bytes(), None)  # what flower-supernode does
    assert parse_public_key(public.read_bytes(), "x") == key
    pem = loaded.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert pem == key.flower_bytes  # what the SuperLink stores and the auth header carries
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_node_keys(tmp_path)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_fingerprint_is_ssh_keygens(tmp_path):
    _, public, key = generate_node_keys(tmp_path)
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public)], capture_output=True, text=True, check=True
    ).stdout
    assert key.fingerprint in shown


def test_rejects_what_is_not_an_ecdsa_public_key(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an OpenSSH public key"):
        read_public_key(bad)
    ed = tmp_path / "ed.pub"
    ed.write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb1vJ8sFP1BqM7yFyO3zZ2c3Q1o0G0xv1a4nC6mS2bI x"
    )
    with pytest.raises(KeyFileError, match="ECDSA"):
        read_public_key(ed)
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * 20000)
    with pytest.raises(KeyFileError, match="too large"):
        read_public_key(big)
    with pytest.raises(KeyFileError, match="no such file"):
        read_public_key(tmp_path / "missing.pub")


def test_device_keygen_without_the_fedcore_command(tmp_path, capsys):
    from deploy.keys import main

    assert main(["--out", str(tmp_path)]) == 0
    key = read_public_key(tmp_path / "node.pub")
    assert capsys.readouterr().out.strip().endswith(f"({key.fingerprint})")
    assert main(["--out", str(tmp_path)]) == 2  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err
