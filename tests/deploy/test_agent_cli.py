"""``fedcore-device``'s mistakes: one line on stderr, exit 2, before any connection."""

import socket

import pytest

from deploy.agent import USAGE, main
from deploy.certs import create_certificates
from deploy.keys import generate_node_keys

DIGITS = ["--dataset", "digits", "--partition-id", "0"]


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed once the block ends


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--superlink", "x:1"], "needs exactly one of"),
        ([*DIGITS], "--superlink: give HOST:PORT"),
        (["--dataset", "nope", "--partition-id", "0", "--superlink", "x:1"], "unknown data set"),
        ([*DIGITS, "--partition-id", "-1"], "--partition-id must be >= 0"),
        ([*DIGITS, "--superlink", "no-port"], "--superlink"),
        ([*DIGITS, "--check", "missing.toml"], "--check: no such file"),
        ([*DIGITS, "--device", "toaster", "--superlink", "x:1"], "--device"),
    ],
)
def test_a_mistake_is_one_line_and_exit_2(capsys, args, says):
    assert main(args) == USAGE
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0 and err.startswith("error: "), err


def test_a_key_needs_tls_and_an_unreachable_superlink_is_named(tmp_path, capsys):
    key, _, _ = generate_node_keys(tmp_path / "keys")
    address = closed_address()
    assert main([*DIGITS, "--superlink", address, "--key", str(key)]) == USAGE
    assert "needs TLS" in capsys.readouterr().err
    ca = create_certificates(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    assert main([*DIGITS, "--superlink", address, "--key", str(key),
                 "--root-certificates", str(ca)]) == USAGE
    assert f"cannot reach a SuperLink at {address}" in capsys.readouterr().err
    (tmp_path / "bad.key").write_text("not a key")
    assert main([*DIGITS, "--superlink", address, "--key", str(tmp_path / "bad.key"),
                 "--root-certificates", str(ca)]) == USAGE
    assert "not an unencrypted ECDSA private key" in capsys.readouterr().err
