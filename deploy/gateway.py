"""A Fleet-only gateway: devices reach the SuperLink's Fleet API, nobody reaches the rest.

Flower 1.42 serves the Fleet, Control and ServerApp (runtime) APIs on one HTTP address, and
the Control API authenticates no one without OIDC. Off loopback, ``fedcore server`` therefore
binds the SuperLink to loopback and puts this gateway on the public address: it terminates
TLS (the same certificate), forwards only ``POST /v1/fleet/NAME`` requests to the SuperLink
over TLS on loopback, and answers everything else ``403``. Requests are checked one at a time
on a kept-alive connection (HTTP/1.1, ``Content-Length`` bodies only, bounded head and body),
so nothing but Fleet calls ever reaches the SuperLink. The device's address goes along as
``X-Forwarded-For`` (any the client sent is dropped), which the SuperLink's log shows.

Run as ``python -m deploy.gateway --listen HOST:PORT --upstream 127.0.0.1:PORT [--certfile
F --keyfile F --cafile F]``; standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import ssl
import sys

FLEET_PATH = re.compile(rb"^/v1/fleet/[a-z0-9-]{1,64}$")  # e.g. /v1/fleet/pull-messages
MAX_HEAD = 16 * 1024
MAX_BODY = 512 * 1024 * 1024  # a model object pushed in one request
IDLE_TIMEOUT = 120.0
HOP_BY_HOP = {b"connection", b"keep-alive", b"x-forwarded-for", b"forwarded", b"x-real-ip"}

log = logging.getLogger("fedcore.gateway")


class Refused(Exception):
    """A request the gateway does not forward: ``status`` and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The start line and the header fields of an HTTP/1.1 message head (a bare CR or LF, or
    another control byte, anywhere is refused: it could end a line for the SuperLink)."""
    lines = head.split(b"\r\n")
    fields = []
    for line in lines:
        if any(byte < 0x20 and byte != 0x09 or byte == 0x7F for byte in line):
            raise Refused(400, "control character in the head")
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise Refused(400, "malformed header")
        fields.append((name.lower(), value.strip()))
    return lines[0], fields


def body_length(fields: list[tuple[bytes, bytes]], request: bool) -> int | None:
    """``Content-Length`` (one, digits only); chunked bodies are refused in requests."""
    if any(name == b"transfer-encoding" for name, _ in fields):
        if request:
            raise Refused(411, "chunked requests are not forwarded")
        return None
    lengths = [value for name, value in fields if name == b"content-length"]
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise Refused(400, "bad Content-Length")
    length = int(lengths[0]) if lengths else 0
    if length > MAX_BODY:
        raise Refused(413, "body too large")
    return length


def check_request_line(line: bytes) -> None:
    """Only ``POST /v1/fleet/...`` over HTTP/1.1 goes through."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        raise Refused(400, "not an HTTP/1.1 request line")
    method, target = parts[0], parts[1]
    if method != b"POST" or not FLEET_PATH.match(target):
        raise Refused(
            403, f"{method.decode(errors='replace')} {target[:80].decode(errors='replace')}"
        )


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """One message head (None: the peer closed between messages)."""
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise Refused(400, "truncated head") from None
        return None
    except asyncio.LimitOverrunError:
        raise Refused(431, "head too large") from None


async def relay_response(upstream: asyncio.StreamReader, client: asyncio.StreamWriter) -> bool:
    """Copy one response from the SuperLink to the device; False if the connection ends."""
    head = await read_head(upstream)
    if head is None:
        return False
    _, fields = parse_head(head)
    client.write(head)
    length = body_length(fields, request=False)
    if length is None:  # chunked: copy chunk by chunk up to the last one and its trailers
        while True:
            size_line = await upstream.readuntil(b"\r\n")
            client.write(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await upstream.readuntil(b"\r\n")) != b"\r\n":
                    client.write(trailer)
                client.write(b"\r\n")
                break
            client.write(await upstream.readexactly(size + 2))
            await client.drain()
    elif length:
        client.write(await upstream.readexactly(length))
    await client.drain()
    return not any(n == b"connection" and v.lower() == b"close" for n, v in fields)


class Gateway:
    """The listening side: one upstream TLS connection per device connection."""

    def __init__(self, upstream: tuple[str, int], upstream_tls: ssl.SSLContext | None) -> None:
        self.upstream, self.upstream_tls = upstream, upstream_tls

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        up_reader = up_writer = None
        try:
            while True:
                head = await read_head(reader)
                if head is None:
                    break
                line, fields = parse_head(head)
                check_request_line(line)
                length = body_length(fields, request=True) or 0
                body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
                if up_writer is None:
                    host, port = self.upstream
                    up_reader, up_writer = await asyncio.open_connection(
                        host, port, ssl=self.upstream_tls, limit=MAX_HEAD
                    )
                kept = [(n, v) for n, v in fields if n not in HOP_BY_HOP]
                kept.append((b"x-forwarded-for", str(peer[0]).encode()))
                out = line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in kept)
                up_writer.write(out + b"\r\n" + body)
                await up_writer.drain()
                assert up_reader is not None
                if not await relay_response(up_reader, writer):
                    break
        except Refused as exc:
            log.warning("refused %s:%s: %d %s", peer[0], peer[1], exc.status, exc)
            reason = str(exc).encode()[:200]
            writer.write(
                b"HTTP/1.1 %d Refused\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (exc.status, len(reason), reason)
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()


async def serve(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    server_tls: ssl.SSLContext | None,
    upstream_tls: ssl.SSLContext | None,
) -> asyncio.Server:
    """Start listening (the caller runs the loop)."""
    gateway = Gateway(upstream, upstream_tls)
    return await asyncio.start_server(
        gateway.handle, listen[0], listen[1], ssl=server_tls, limit=MAX_HEAD
    )


def tls_contexts(
    certfile: str | None, keyfile: str | None, cafile: str | None
) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server side, upstream side) contexts; both None without certificates."""
    if certfile is None:
        return None, None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.load_cert_chain(certfile, keyfile)
    client = ssl.create_default_context(cafile=cafile)
    return server, client


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    """``python -m deploy.gateway``: serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_address)
    parser.add_argument("--upstream", required=True, type=_address)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--cafile")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    server_tls, upstream_tls = tls_contexts(args.certfile, args.keyfile, args.cafile)

    async def run() -> None:
        server = await serve(args.listen, args.upstream, server_tls, upstream_tls)
        log.info("fleet gateway on %s:%d -> %s:%d", *args.listen, *args.upstream)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    main()
