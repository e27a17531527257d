"""The Fleet transport against a loopback HTTP server: headers, signatures, errors sorted."""

import json
import socket
import threading
from base64 import b64decode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client_runtime.fleet import transport
from client_runtime.fleet.proto import fleet_pb2


class Scripted(BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []
    seen: list[tuple[str, dict, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.path, dict(self.headers), body))
        status, payload = self.answers.pop(0)
        self.send_response(status)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Scripted.answers, Scripted.seen = [], []
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def client(address):
    signer = transport.NodeSigner(ec.generate_private_key(ec.SECP384R1()))
    return transport.FleetClient(address, root_certificates=None, signer=signer, timeout=10)


def error(code: int, detail: str) -> bytes:
    return json.dumps({"code": code, "detail": detail}).encode()


def test_a_call_is_flowers_request_signed_as_flowers_supernode_signs(server):
    verify = pytest.importorskip("flwr.supercore.primitives.asymmetric")
    fleet = client(server)
    answer = fleet_pb2.ActivateNodeResponse(node_id=42)
    Scripted.answers = [(200, answer.SerializeToString())]
    request = fleet_pb2.ActivateNodeRequest(public_key=fleet.signer.public, heartbeat_interval=30)
    got = fleet.call("activate-node", request, fleet_pb2.ActivateNodeResponse)
    assert got.node_id == 42
    path, headers, body = Scripted.seen[0]
    assert path == "/v1/fleet/activate-node" and body == request.SerializeToString()
    assert headers["content-type"] == "application/protobuf"
    assert headers["flwr-package-version"] == "1.42.0"
    assert headers["flwr-component-name"] == "SuperNode"
    public = b64decode(headers["flwr-public-key"])
    assert public == fleet.signer.public
    assert verify.verify_signature(verify.bytes_to_public_key(public),
                                   headers["flwr-timestamp"].encode("ascii"),
                                   b64decode(headers["flwr-signature"]))


@pytest.mark.parametrize(
    ("status", "payload", "kind", "says"),
    [
        (412, error(1001, "Runtime version compatibility check failed."),
         transport.VersionMismatch, "another Flower release than 1.42.0"),
        (404, b"Not Found", transport.VersionMismatch, "no Flower 1.42.0 Fleet API"),
        (401, error(0, "Invalid SuperNode authentication"), transport.Refused, "401"),
        (412, error(2004, "Failed to activate SuperNode."), transport.Refused, "activate"),
        (403, error(2007, "run status"), transport.RunGone, "403"),
        (503, b"", transport.Unreachable, "503"),
        (500, b"\xff" * 10, transport.FleetError, "500"),
    ],
)
def test_errors_are_sorted_into_what_the_agent_can_act_on(server, status, payload, kind, says):
    fleet = client(server)
    Scripted.answers = [(status, payload)]
    with pytest.raises(kind, match=says):
        fleet.call("activate-node", fleet_pb2.ActivateNodeRequest(),
                   fleet_pb2.ActivateNodeResponse)


def test_nobody_listening_is_unreachable_and_a_garbled_answer_an_error(server):
    with pytest.raises(transport.Unreachable):
        client("127.0.0.1:9").call("pull-messages", fleet_pb2.PullMessagesRequest(),
                                   fleet_pb2.PullMessagesResponse)
    Scripted.answers = [(200, b"\xff\xff\xff")]
    with pytest.raises(transport.FleetError, match="malformed"):
        client(server).call("pull-messages", fleet_pb2.PullMessagesRequest(),
                            fleet_pb2.PullMessagesResponse)


class KeptAlive(Scripted):
    """HTTP/1.1: the connection stays open unless ``hang_up`` (closed after the answer, as a
    server's keep-alive timeout closes an idle connection, without saying so)."""

    protocol_version = "HTTP/1.1"
    hang_up = False
    drop = 0  # the next ``drop`` requests: closed unanswered, as uvicorn's keep-alive timeout does
    before = None  # called before answering
    ports: list[int] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.ports.append(self.client_address[1])
        if KeptAlive.drop:
            KeptAlive.drop -= 1
            self.close_connection = True
            return
        if KeptAlive.before is not None:
            KeptAlive.before()
        super().do_POST()
        self.close_connection = self.hang_up


@pytest.fixture
def kept_alive():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), KeptAlive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Scripted.answers, Scripted.seen, KeptAlive.ports, KeptAlive.hang_up = [], [], [], False
    KeptAlive.drop = 0
    KeptAlive.before = None
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def pull(fleet):
    return fleet.call("pull-messages", fleet_pb2.PullMessagesRequest(),
                      fleet_pb2.PullMessagesResponse)


def test_calls_at_once_open_connections_and_later_calls_reuse_them(kept_alive):
    fleet = client(kept_alive)
    both = threading.Barrier(2, timeout=30)  # the server answers once both calls are in
    Scripted.answers = [(200, b"")] * 4
    KeptAlive.before = both.wait
    callers = [threading.Thread(target=pull, args=(fleet,)) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    KeptAlive.before = None
    pull(fleet)
    pull(fleet)
    assert len(set(KeptAlive.ports[:2])) == 2 and set(KeptAlive.ports[2:]) <= set(KeptAlive.ports)
    fleet.close()


def test_a_connection_the_superlink_closed_is_opened_again(kept_alive):
    import select

    fleet = client(kept_alive)
    KeptAlive.hang_up = True
    Scripted.answers = [(200, b""), (200, b"")]
    pull(fleet)
    [(kept, _)] = fleet._idle  # kept: the server did not say it would close
    sock = kept.sock
    assert sock is not None
    assert select.select([sock], [], [], 30)[0]  # the server has closed it by now
    pull(fleet)  # not Unreachable: opened again
    assert len(set(KeptAlive.ports)) == 2


def test_a_request_the_server_dropped_on_a_kept_connection_is_sent_once_more(kept_alive):
    """CI saw it: uvicorn closed an idle connection as the agent's SecAgg+ reply went out."""
    fleet = client(kept_alive)
    Scripted.answers = [(200, b""), (200, b"")]
    pull(fleet)
    KeptAlive.drop = 1
    pull(fleet)  # not Unreachable: the same request again, on a new connection
    first, dropped, again = KeptAlive.ports
    assert dropped == first and again != first
    KeptAlive.drop = 1
    with pytest.raises(transport.Unreachable):  # a new connection that loses it: no retry
        client(kept_alive).call("pull-messages", fleet_pb2.PullMessagesRequest(),
                                fleet_pb2.PullMessagesResponse)
    assert len(KeptAlive.ports) == 4
    fleet.close()


def test_a_connection_idle_too_long_is_not_reused(kept_alive, monkeypatch):
    fleet = client(kept_alive)
    Scripted.answers = [(200, b"")] * 3
    pull(fleet)
    pull(fleet)
    monkeypatch.setattr(transport, "MAX_IDLE_S", -1.0)  # every idle connection is too old
    pull(fleet)
    first, reused, renewed = KeptAlive.ports
    assert reused == first and renewed != first
    fleet.close()


def test_no_answer_within_the_timeout_is_unreachable():
    with socket.socket() as listener:  # accepts (the backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        fleet = transport.FleetClient(f"127.0.0.1:{listener.getsockname()[1]}",
                                      root_certificates=None, signer=None, timeout=0.2)
        with pytest.raises(transport.Unreachable, match="timed out"):
            pull(fleet)
