"""Flower 1.42's Fleet API over HTTP(S), as its SuperNode speaks it, with the standard
library's ``http.client`` (``httpx`` cost an idle device 5 MiB more).

Each call is one ``POST /v1/fleet/<name>`` with a serialized protobuf request and response
(``flwr/supernode/fleet_http_client.py``), on kept-alive connections (as many as calls run at
once, from the agent's loop, its heartbeats and parallel object calls). The SuperLink's uvicorn
closes a connection idle for 5 s, and a request sent as it does so fails with no answer: a
connection idle for ``MAX_IDLE_S`` is not reused, and a request that a reused connection loses
before any answer (the server closed it) is sent once more on a new one. Every request carries
Flower's runtime-version headers (this agent speaks the pinned protocol,
``proto.FLOWER_VERSION``; a SuperLink of another minor release answers 412 and
``VersionMismatch`` says so) and, with a key, the node authentication headers of
``node_auth_http_interceptor.py``: the current UTC time in ISO format signed with ECDSA/SHA-256
by the SuperNode key, and the public key (PEM, SubjectPublicKeyInfo), both base64. Errors are
sorted into what a caller can act on: ``Unreachable`` (retry later), ``Refused`` (the SuperLink
does not accept this node), ``RunGone`` (the run is not running), ``VersionMismatch`` and
``FleetError`` (anything else).
"""

from __future__ import annotations

import datetime
import http.client
import json
import select
import ssl
import threading
import time
from base64 import b64encode
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError, Message

from client_runtime.fleet.proto import FLOWER_VERSION
from fedcore import trace

R = TypeVar("R", bound=Message)
MEDIA_TYPE = "application/protobuf"
VERSION_HEADERS = {  # flwr.supercore.runtime_version_compatibility
    "flwr-package-name": "flwr",
    "flwr-package-version": FLOWER_VERSION,
    "flwr-component-name": "SuperNode",
}
VERSION_WARNING = "flwr-version-incompatibility-message"
MAX_ERROR_BODY = 64 * 1024
MAX_IDLE = 4  # kept-alive connections kept (the agent's loop, heartbeats, parallel object calls)
MAX_IDLE_S = 2.0  # reuse a kept-alive connection only this long (uvicorn closes at 5 s)
# What a reused connection raises when the server had closed it before reading the request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
# Flower's ApiErrorCode values this agent tells apart
RUNTIME_VERSION_INCOMPATIBLE = 1001
REFUSED_CODES = {2001, 2004, 23, 22}  # registration disabled, activation failed, key in use/bad
RUN_GONE_CODES = {2007, 2008, 2009}  # run status does not allow it, get run / get FAB failed


class FleetError(RuntimeError):
    """A Fleet call failed; ``code`` is Flower's error code (0 if none came back)."""

    def __init__(self, message: str, code: int = 0, status: int = 0) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class Unreachable(FleetError):
    """The SuperLink did not answer (connection refused, reset, timeout, 502-504)."""


class Refused(FleetError):
    """The SuperLink does not accept this node: unauthenticated, not enrolled or revoked."""


class RunGone(FleetError):
    """The run this call was for is no longer running."""


class VersionMismatch(FleetError):
    """The SuperLink speaks another Flower release's protocol."""


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The SuperNode key (``fedcore clients keygen`` writes it: OpenSSH or PEM, unencrypted)."""
    data = path.read_bytes()[:16384]
    try:
        key = serialization.load_ssh_private_key(data, None)
    except (ValueError, TypeError):
        key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an ECDSA private key")
    return key


def public_key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as Flower sends and stores it (PEM, SubjectPublicKeyInfo)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class NodeSigner:
    """Flower's SuperNode authentication headers for one key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.public = public_key_bytes(key)
        self._public_b64 = b64encode(self.public).decode("ascii")

    def headers(self) -> dict[str, str]:
        """Headers for one request, signed now."""
        timestamp = datetime.datetime.now(tz=datetime.UTC).isoformat()
        signature = self.key.sign(timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        return {
            "flwr-public-key": self._public_b64,
            "flwr-timestamp": timestamp,
            "flwr-signature": b64encode(signature).decode("ascii"),
        }


def tls_context(root_certificates: Path) -> ssl.SSLContext:
    """A client context that trusts only ``root_certificates`` (the federation's CA)."""
    context = ssl.create_default_context(cafile=str(root_certificates))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class FleetClient:
    """Kept-alive HTTP(S) connections to a SuperLink's Fleet API (callable from several
    threads: a call takes an idle connection or opens one, and gives it back)."""

    def __init__(
        self,
        address: str,
        *,
        root_certificates: Path | None,
        signer: NodeSigner | None,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.context = tls_context(root_certificates) if root_certificates is not None else None
        self.signer = signer
        self.timeout = timeout
        self.warning: str | None = None  # the SuperLink's version warning, if it sent one
        self._lock = threading.Lock()
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # (conn, idle since)
        self._closed = False

    def _take(self, timeout: float, fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection and True, or a new one and False. One idle too long, or that
        the SuperLink closed (an idle kept-alive socket that reads is at its end), is closed
        and opens again on the request (not counted as reused)."""
        conn, since = None, 0.0
        if not fresh:
            with self._lock:
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
        reused = conn is not None
        if conn is None:
            if self.context is not None:
                conn = http.client.HTTPSConnection(self.address, timeout=timeout,
                                                   context=self.context)
            else:
                conn = http.client.HTTPConnection(self.address, timeout=timeout)
        elif conn.sock is None or time.monotonic() - since > MAX_IDLE_S \
                or select.select([conn.sock], [], [], 0)[0]:
            conn.close()
            reused = False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, reused

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def call(self, name: str, request: Message, response_type: type[R],
             timeout: float | None = None) -> R:
        """``POST /v1/fleet/<name>``; the parsed response, or one of this module's errors."""
        headers = {"content-type": MEDIA_TYPE, "accept": MEDIA_TYPE, **VERSION_HEADERS}
        if self.signer is not None:
            headers.update(self.signer.headers())
        body = request.SerializeToString(deterministic=True)
        wait = self.timeout if timeout is None else timeout
        started = time.time()
        try:
            conn, reused = self._take(wait)
        except ValueError as exc:  # a malformed address (http.client's port parsing)
            raise Unreachable(f"cannot connect: {exc}") from None
        try:
            try:
                response, content = _post(conn, name, body, headers)
            except _STALE:
                if not reused:
                    raise
                conn.close()  # closed by the server before it read the request: once more
                conn, _ = self._take(wait, fresh=True)
                response, content = _post(conn, name, body, headers)
        except ssl.SSLError as exc:
            conn.close()
            raise Refused(f"TLS: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if isinstance(exc.__context__, ssl.SSLError):
                raise Refused(f"TLS: {exc}") from None
            raise Unreachable(f"cannot connect: {type(exc).__name__}: {exc}") from None
        if response.will_close:
            conn.close()
        else:
            self._give(conn)
        if warning := response.getheader(VERSION_WARNING):
            self.warning = warning
        if trace.enabled():
            trace.event("agent.call", at=started, call=name, end=time.time())
        if response.status >= 400:
            raise _error(name, response.status, content)
        result = response_type()
        try:
            result.ParseFromString(content)
        except DecodeError:
            raise FleetError(f"{name}: the SuperLink sent a malformed response") from None
        return result

    def close(self) -> None:
        """Close the connections (one in use closes when its call ends)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


def _post(conn: http.client.HTTPConnection, name: str, body: bytes,
          headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request("POST", f"/v1/fleet/{name}", body=body, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def _error(name: str, status: int, content: bytes) -> FleetError:
    code, detail = 0, ""
    try:
        payload = json.loads(content[:MAX_ERROR_BODY])
        if isinstance(payload, dict):
            code = int(payload.get("code") or 0)
            detail = str(payload.get("detail") or "")
            if payload.get("extra"):
                detail += f" ({payload['extra']})"
    except (ValueError, TypeError):
        detail = content[:200].decode("utf-8", "replace")
    message = f"{name}: {status} {detail}".strip()
    if code == RUNTIME_VERSION_INCOMPATIBLE:
        return VersionMismatch(
            f"the SuperLink runs another Flower release than {FLOWER_VERSION}, whose Fleet "
            f"protocol this device speaks: {detail}", code, status)
    if status in (502, 503, 504):
        return Unreachable(message, code, status)
    if status == 401 or code in REFUSED_CODES:
        return Refused(message, code, status)
    if code in RUN_GONE_CODES:
        return RunGone(message, code, status)
    if status in (404, 405):
        return VersionMismatch(
            f"no Flower {FLOWER_VERSION} Fleet API at this address ({message})", code, status)
    return FleetError(message, code, status)


__all__ = [
    "FleetClient", "FleetError", "NodeSigner", "Refused", "RunGone", "Unreachable",
    "VersionMismatch", "load_private_key", "public_key_bytes", "tls_context",
]
