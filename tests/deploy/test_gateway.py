"""``deploy.gateway``: only ``POST /v1/fleet/...`` reaches the SuperLink, one request at a time."""

import asyncio

from deploy.gateway import serve


async def upstream_server(seen: list[bytes]) -> asyncio.Server:
    """An HTTP/1.1 upstream that records each request head and answers with its body."""

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            seen.append(head)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def exchange(port: int, *requests: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = b""
    for request in requests:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        replies += head + await reader.readexactly(length)
    writer.close()
    return replies


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path,
        extra,
        len(body),
        body,
    )


def test_fleet_calls_pass_and_everything_else_is_refused():
    async def scenario():
        seen: list[bytes] = []
        upstream = await upstream_server(seen)
        up_port = upstream.sockets[0].getsockname()[1]
        gateway = await serve(("127.0.0.1", 0), ("127.0.0.1", up_port), None, None)
        port = gateway.sockets[0].getsockname()[1]
        spoofed = b"X-Forwarded-For: 6.6.6.6\r\n"
        both = await exchange(
            port,
            post(b"/v1/fleet/pull-messages", b"one", spoofed),
            post(b"/v1/fleet/push-messages", b"two"),
        )
        refused = [
            await exchange(port, request)
            for request in (
                post(b"/v1/control/list-runs", b""),
                post(b"/v1/fleet/../control/stop-run", b""),
                b"GET /v1/fleet/pull-messages HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                b"POST /v1/fleet/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                post(b"/v1/fleet/x", b"", b"Content-Length: 5\r\n"),
                post(b"/v1/fleet/%2e%2e", b""),
                post(b"/v1/fleet/pull-messages?x=1", b""),
                post(b"/v1/fleet/x", b"", b"X-A: 1\nContent-Length: 9\r\n"),
            )
        ]
        gateway.close()
        upstream.close()
        return both, refused, seen

    both, refused, seen = asyncio.run(scenario())
    assert both.count(b"HTTP/1.1 200 OK") == 2 and both.endswith(b"two")
    assert [h.split(b" ")[1] for h in seen] == [
        b"/v1/fleet/pull-messages",
        b"/v1/fleet/push-messages",
    ]
    assert b"6.6.6.6" not in seen[0] and b"x-forwarded-for: 127.0.0.1" in seen[0]
    statuses = [r.split(b" ")[1] for r in refused]
    assert statuses == [b"403", b"403", b"403", b"411", b"400", b"403", b"403", b"400"]
