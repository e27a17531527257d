"""``deploy.probe.check_tls``: what a device is told before it starts a SuperNode."""

import socket
import ssl
import threading

import pytest

from deploy.certs import create_certificates
from deploy.probe import check_tls


@pytest.fixture
def certs(tmp_path):
    return create_certificates(tmp_path / "certs", ["127.0.0.1"])


def serve(tls_files=None):
    """A listener on loopback that completes TLS handshakes (or, without files, speaks none)."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = None
    if tls_files is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_files.server_cert, tls_files.server_key)

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                if context is not None:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                else:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    conn.close()
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=accept, daemon=True).start()
    return listener


def test_tls_server_with_the_right_ca_passes_and_the_others_are_named(certs, tmp_path):
    other = create_certificates(tmp_path / "other", ["127.0.0.1"])
    tls = serve(certs)
    port = tls.getsockname()[1]
    try:
        assert check_tls("127.0.0.1", port, certs.ca_cert) is None
        assert "speaks TLS: give --root-certificates" in check_tls("127.0.0.1", port, None)
        wrong = check_tls("127.0.0.1", port, other.ca_cert)
        assert "is not trusted with" in wrong and "wrong CA" in wrong
    finally:
        tls.close()
    plain = serve()
    try:
        port = plain.getsockname()[1]
        assert check_tls("127.0.0.1", port, None) is None
        assert "does not speak TLS" in check_tls("127.0.0.1", port, certs.ca_cert)
    finally:
        plain.close()
    assert "not a CA certificate" in check_tls("127.0.0.1", port, certs.server_key)
