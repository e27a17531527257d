"""Before a device starts its SuperNode: does the SuperLink speak TLS, and do we trust it?

A SuperNode that cannot complete a TLS handshake retries for ever; ``fedcore client`` checks
first and says what is wrong in one line: the SuperLink speaks TLS but no CA was given, it
does not speak TLS but one was given, or its certificate is not signed by the given CA (or
not for this address).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def _handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            pass


def check_tls(
    host: str, port: int, root_certificates: Path | None, timeout: float = 10.0
) -> str | None:
    """None if the connection will work as configured, else why not (one line)."""
    address = f"{host}:{port}"
    if root_certificates is None:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            _handshake(host, port, context, timeout)
        except (ssl.SSLError, OSError):
            return None  # no TLS there: a plain SuperNode is what it expects
        return (
            f"the SuperLink at {address} speaks TLS: give --root-certificates ca.pem "
            "(and --key node.key if it admits enrolled devices only)"
        )
    try:
        context = ssl.create_default_context(cafile=str(root_certificates))
    except (ssl.SSLError, OSError) as exc:
        return f"--root-certificates: {root_certificates}: not a CA certificate ({exc})"
    try:
        _handshake(host, port, context, timeout)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the SuperLink at {address} is not trusted with {root_certificates}: "
            f"{exc.verify_message} (wrong CA, or a certificate not made for {host})"
        )
    except ssl.SSLError as exc:
        return (
            f"the SuperLink at {address} does not speak TLS as expected ({exc.reason}): "
            "was it started with certificates?"
        )
    except OSError as exc:
        return f"cannot reach a SuperLink at {address}: {exc.strerror or exc}"
    return None


__all__ = ["check_tls"]
