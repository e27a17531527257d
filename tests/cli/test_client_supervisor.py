"""``fedcore client --stock-supernode``'s supervisor: a SuperNode whose connection loop ended
on an error it does not retry, but whose process lives on (Flower 1.42: its runtime API thread
is not a daemon), is replaced; one that logged an error it carries on after is left alone.

The SuperNode and the SuperLink are stand-ins: a node process that never exits by itself,
writing the lines Flower's SuperNode writes, and a SuperLink that is always reachable. The
real SuperNode's behaviour is shown by ``test_flowers_supernode_outlives_its_loop`` against a
scripted Fleet API that answers pull-messages with HTTP 500.
"""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

import deploy.processes
from cli.client import _Supervisor
from deploy.processes import flower_bin, flower_env, free_port

ENDED = "\x1b[91mERROR \x1b[0m:     Server error '500 Internal Server Error' for url " \
        "'http://127.0.0.1:9092/v1/fleet/pull-messages'"  # fmt: skip
CARRIED_ON = "\x1b[91mERROR \x1b[0m:     Failed to receive message 3f2a: timed out"


class StandInNode:
    """A SuperNode process that runs until stopped; ``say`` appends to its log."""

    def __init__(self, log: Path) -> None:
        self.log, self.stopped = log, False

    def running(self) -> bool:
        return not self.stopped

    def tail(self, lines: int = 5) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:])

    def stop(self) -> int:
        self.stopped = True
        return 0

    def say(self, text: str) -> None:
        with self.log.open("a") as handle:
            handle.write(text + "\n")


def supervise(tmp_path, monkeypatch, first_says: str, polls: int = 40) -> list[StandInNode]:
    """The supervisor over ``polls`` polls of a reachable SuperLink (then gone for good);
    the first node says ``first_says`` at poll 5. The nodes it started."""
    log = tmp_path / "supernode.log"
    log.write_text("")
    nodes: list[StandInNode] = []
    count = iter(range(10_000))

    def reachable(host, port, timeout=3.0):
        i = next(count)
        if i == 5:
            nodes[0].say(first_says)
        return None if i < polls else "refused"

    def start() -> StandInNode:
        nodes.append(StandInNode(log))
        return nodes[-1]

    monkeypatch.setattr(deploy.processes, "reachable", reachable)
    supervisor = _Supervisor(start, "127.0.0.1", 1, 0.2, log, poll=0.01)
    assert supervisor.run() is True  # the SuperLink gone for good at the end
    return nodes


def test_a_supernode_whose_loop_ended_is_replaced(tmp_path, monkeypatch):
    nodes = supervise(tmp_path, monkeypatch, ENDED)
    assert len(nodes) == 2 and nodes[0].stopped and not nodes[1].stopped


def test_a_supernode_that_carries_on_is_left_alone(tmp_path, monkeypatch):
    nodes = supervise(tmp_path, monkeypatch, CARRIED_ON)
    assert len(nodes) == 1


class FailingFleet(BaseHTTPRequestHandler):
    """Registers and activates any node, acknowledges heartbeats; pull-messages: HTTP 500."""

    calls: list[str] = []

    def do_POST(self) -> None:
        from flwr.proto import fleet_pb2, heartbeat_pb2

        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        name = self.path.rsplit("/", 1)[-1]
        self.calls.append(name)
        replies = {
            "register-node": fleet_pb2.RegisterNodeFleetResponse(node_id=7),
            "activate-node": fleet_pb2.ActivateNodeResponse(node_id=7),
            "send-node-heartbeat": heartbeat_pb2.SendNodeHeartbeatResponse(success=True),
        }
        code = 500 if name == "pull-messages" else 200
        body = replies[name].SerializeToString() if name in replies else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.skipif(not Path(flower_bin("flower-supernode")).exists(), reason="no Flower")
def test_flowers_supernode_outlives_its_loop(tmp_path):
    """Why the supervisor reads the log: after one 500 the stock SuperNode logs the error,
    makes no request again, and still runs (Flower 1.42)."""
    fleet = ThreadingHTTPServer(("127.0.0.1", 0), FailingFleet)
    Thread(target=fleet.serve_forever, daemon=True).start()
    log = tmp_path / "supernode.log"
    args = [flower_bin("flower-supernode"), "--insecure", "--superlink",
            f"127.0.0.1:{fleet.server_address[1]}", "--port", str(free_port())]  # fmt: skip
    node = deploy.processes.FlowerProcess("flower-supernode", args, flower_env(tmp_path), log)
    try:
        deadline = time.monotonic() + 120
        while not any(_ended(line) for line in log.read_text(errors="replace").splitlines()):
            assert node.running(), node.tail(20)
            assert time.monotonic() < deadline, node.tail(20)
            time.sleep(0.2)
        time.sleep(10)  # it would have left by now: Flower's forced exit takes 5 s
        assert node.running(), node.tail(20)
        assert FailingFleet.calls.count("pull-messages") == 1  # and it asks for nothing more
    finally:
        node.stop()
        fleet.shutdown()


def _ended(line: str) -> bool:
    from cli.client import _ends_the_loop

    return _ends_the_loop(line)

