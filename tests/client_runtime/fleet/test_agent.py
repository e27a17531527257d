"""The lean agent's loop against a scripted Fleet API (no processes, no timing)."""

import io
import random
import time
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client_runtime.fleet import objects
from client_runtime.fleet.agent import Agent, AgentStopped, Settings
from client_runtime.fleet.proto import (
    fab_pb2,
    fleet_pb2,
    heartbeat_pb2,
    message_pb2,
    run_pb2,
    transport_pb2,
)
from client_runtime.fleet.runconfig import fab_config
from client_runtime.fleet.session import backoff_delays
from client_runtime.fleet.transport import (
    FleetError,
    NodeSigner,
    Refused,
    Unreachable,
    VersionMismatch,
)
from fedcore.records import ConfigRecord, RecordDict

NODE = 5


def fab() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("pyproject.toml", '[tool.flwr.app.config]\nlr = 0.1\nnested.k = "a"\n')
    return buffer.getvalue()


class Link:
    """A SuperLink's Fleet API as the agent sees it: scripted answers, recorded calls."""

    def __init__(self) -> None:
        self.signer = NodeSigner(ec.generate_private_key(ec.SECP384R1()))
        self.warning = None
        self.inbox: list[tuple[message_pb2.Message, objects.Deflated]] = []
        self.pushed: list[tuple[message_pb2.Message, message_pb2.ObjectTree]] = []
        self.objects: dict[str, bytes] = {}
        self.failures: list[FleetError] = []  # raised, one per call, before answering
        self.calls: list[str] = []

    def send(self, message_type: str, content: RecordDict, message_id_salt: str = "") -> str:
        meta = message_pb2.Metadata(run_id=7, src_node_id=1, dst_node_id=NODE, group_id="1",
                                    created_at=time.time(), ttl=3600.0, message_type=message_type)
        content = RecordDict({**content, "salt": ConfigRecord({"s": message_id_salt})})
        deflated = objects.deflate(meta, content)
        meta.message_id = deflated.object_id
        self.inbox.append((message_pb2.Message(metadata=meta), deflated))
        return deflated.object_id

    def call(self, name, request, response_type, timeout=None):
        self.calls.append(name)
        if self.failures:
            raise self.failures.pop(0)
        if name == "activate-node":
            return fleet_pb2.ActivateNodeResponse(node_id=NODE)
        if name == "pull-messages":
            if not self.inbox:
                return fleet_pb2.PullMessagesResponse()
            message, deflated = self.inbox.pop(0)
            self.current = deflated
            return fleet_pb2.PullMessagesResponse(messages_list=[message],
                                                  message_object_trees=[deflated.tree])
        if name == "get-run":
            run = run_pb2.Run(run_id=request.run_id, fab_hash="h")
            run.override_config["lr"].CopyFrom(transport_pb2.Scalar(double=0.5))
            return run_pb2.GetRunResponse(run=run)
        if name == "get-fab":
            return fab_pb2.GetFabResponse(fab=fab_pb2.Fab(hash_str="h", content=fab()))
        if name == "pull-object":
            content = self.current.contents[request.object_id]
            return message_pb2.PullObjectResponse(object_found=True, object_available=True,
                                                  object_content=content)
        if name == "push-messages":
            self.pushed.append((request.messages_list[0], request.message_object_trees[0]))
            ids = list(objects.tree_ids(request.message_object_trees[0]))
            return fleet_pb2.PushMessagesResponse(objects_to_push=ids, session_id="s")
        if name == "push-object":
            self.objects[request.object_id] = request.object_content
            return message_pb2.PushObjectResponse(stored=True)
        if name == "send-node-heartbeat":
            return heartbeat_pb2.SendNodeHeartbeatResponse(success=True)
        return response_type()

    def reply(self, index: int = -1):
        head, tree = self.pushed[index]
        return head, objects.inflate(tree, self.objects, 1 << 20)[1]

    def close(self) -> None:
        pass


def query(content, context):
    return RecordDict({"info": ConfigRecord({"node": context.node_id,
                                             "lr": context.run_config["lr"]})})


def train(content, context):
    raise ValueError("data check: model 'logreg': each example has shape (3,)")


FAST = Settings(backoff=(0.001, 0.002), max_wait=0.05, poll_active=0.0)


def make_agent(link: Link, **settings) -> Agent:
    agent = Agent(link, {"query": query, "train": train}, {"partition-id": 0},
                  settings=Settings(**{**FAST.__dict__, **settings}), rng=random.Random(0))
    agent.activate()
    return agent


def test_a_message_is_answered_with_the_handlers_reply():
    link = Link()
    agent = make_agent(link)
    message_id = link.send("query", RecordDict())
    assert agent.poll_once()
    head, content = link.reply()
    meta = head.metadata
    assert meta.reply_to_message_id == message_id and meta.dst_node_id == 1
    assert meta.src_node_id == NODE and meta.message_type == "query" and meta.group_id == "1"
    assert meta.message_id == link.pushed[-1][1].object_id  # Flower's message id: the root's
    assert content["info"] == {"node": NODE, "lr": 0.5}  # the run's override of the FAB's lr
    assert "confirm-message-received" in link.calls


def test_a_message_that_comes_again_is_not_answered_twice():
    link = Link()
    agent = make_agent(link)
    link.send("query", RecordDict(), "same")
    link.inbox.append(link.inbox[0])  # the SuperLink hands the same message out again
    assert agent.poll_once() and agent.poll_once()
    assert len(link.pushed) == 1


def test_a_handler_that_raises_answers_with_flowers_error_reply():
    link = Link()
    agent = make_agent(link)
    link.send("train", RecordDict())
    agent.poll_once()
    head, _ = link.pushed[-1]
    assert head.HasField("error") and head.error.code == 2
    assert "data check: model 'logreg'" in head.error.reason
    link.send("evaluate.nothing", RecordDict())  # no handler: an error reply too
    agent.poll_once()
    assert "no handler" in link.pushed[-1][0].error.reason


def test_the_agent_waits_out_an_absent_superlink_and_rejoins():
    link = Link()
    agent = make_agent(link, max_wait=30.0)
    link.failures = [Unreachable("down")] * 5
    agent._connect(first=False)
    assert agent.node_id == NODE and link.calls.count("activate-node") == 1 + 5 + 1


def test_the_agent_gives_up_after_max_wait():
    link = Link()
    agent = make_agent(link)
    link.failures = [Unreachable("down")] * 10_000
    with pytest.raises(AgentStopped, match="has been gone") as stopped:
        agent._connect(first=False)
    assert not stopped.value.refused


def test_a_refused_key_stops_the_agent_at_once():
    link = Link()
    link.failures = [Refused("activate-node: 412 Failed to activate SuperNode.", 2004, 412)]
    agent = Agent(link, {}, {}, settings=FAST)
    with pytest.raises(AgentStopped, match="refused this device's key") as stopped:
        agent.run()
    assert stopped.value.refused


def test_a_message_whose_objects_do_not_match_is_refused_in_the_reply():
    link = Link()
    agent = make_agent(link)
    link.send("query", RecordDict())
    _, deflated = link.inbox[0]
    oid = next(iter(deflated.contents))
    deflated.contents[oid] += b"x"
    assert agent.poll_once()
    head, _ = link.pushed[-1]  # the server records why; no handler ran
    assert head.error.code == 2 and "does not match its id" in head.error.reason


def test_backoff_grows_with_jitter_up_to_its_ceiling():
    delays = backoff_delays(0.5, 10.0, random.Random(1))
    waits = [next(delays) for _ in range(12)]
    assert all(0.5 <= w <= 10.0 for w in waits) and max(waits[-4:]) > 2.0
    assert len(set(waits)) == len(waits)


def test_the_run_config_is_the_fabs_with_the_runs_overrides():
    assert fab_config(fab(), {"lr": 0.5, "unknown": 1}) == {"lr": 0.5, "nested.k": "a"}
    with pytest.raises(FleetError, match="unreadable"):
        fab_config(b"not a zip", {})


def test_a_superlink_of_another_flower_release_stops_the_agent_with_a_clear_line():
    link = Link()
    link.failures = [VersionMismatch("the SuperLink runs another Flower release than 1.42.0")]
    agent = Agent(link, {}, {}, settings=FAST)
    with pytest.raises(AgentStopped, match="another Flower release") as stopped:
        agent.run()
    assert stopped.value.refused


def test_a_superlink_back_on_its_old_state_is_rejoined_as_the_same_node():
    """Restarted on its old state the SuperLink still counts the node online and refuses to
    activate it again; it acknowledges the node's heartbeat, so the agent goes on as it."""
    link = Link()
    agent = make_agent(link, max_wait=30.0)
    link.failures = [Unreachable("down"), Refused("activate-node: 412", 2004, 412)]
    agent._connect(first=False)
    assert agent.node_id == NODE and link.calls[-1] == "send-node-heartbeat"
    link.send("query", RecordDict())
    assert agent.poll_once() and len(link.pushed) == 1


def test_a_revoked_node_is_not_taken_for_an_online_one():
    link = Link()
    agent = make_agent(link)
    refused = Refused("401 Invalid SuperNode authentication", 0, 401)
    link.failures = [refused] * 10_000  # activation and heartbeat alike
    with pytest.raises(AgentStopped, match="refused this device's key") as stopped:
        agent._connect(first=False)
    assert stopped.value.refused


def test_an_agent_started_again_goes_on_as_its_node_while_the_old_one_counts_online(tmp_path):
    """Killed and started again, the agent is refused (its old node is still online); with its
    node id remembered, a heartbeat signed for that node is acknowledged: it goes on as it."""
    from client_runtime.fleet.nodefile import NodeFile

    link = Link()
    first = Agent(link, {}, {}, settings=FAST, node_file=NodeFile(tmp_path, "l:1", b"k"))
    first._connect(first=True)
    assert first.node_id == NODE
    first.node_file.release()  # what the kernel does for a killed process
    link.calls.clear()
    link.failures = [Refused("activate-node: 412", 2004, 412)]
    again = Agent(link, {}, {}, settings=FAST, node_file=NodeFile(tmp_path, "l:1", b"k"))
    again._connect(first=True)
    assert again.node_id == NODE and link.calls == ["activate-node", "send-node-heartbeat"]
    link.send("query", RecordDict())
    assert again.poll_once() and len(link.pushed) == 1


def test_without_its_node_id_or_acknowledged_heartbeat_a_restart_is_refused(tmp_path):
    from client_runtime.fleet.nodefile import NodeFile

    refused = Refused("activate-node: 412", 2004, 412)
    link = Link()
    link.failures = [refused]  # nothing remembered: refused at once, as a twin is
    fresh = Agent(link, {}, {}, settings=FAST, node_file=NodeFile(tmp_path, "l:1", b"k"))
    with pytest.raises(AgentStopped, match="refused this device's key"):
        fresh.run()
    fresh.node_file.release()
    remembered = NodeFile(tmp_path, "l:1", b"k")
    remembered.claim()
    remembered.remember(NODE)
    remembered.release()
    link.failures = [refused, Refused("401 Invalid SuperNode authentication", 0, 401)]
    stale = Agent(link, {}, {}, settings=FAST, node_file=NodeFile(tmp_path, "l:1", b"k"))
    with pytest.raises(AgentStopped, match="refused this device's key"):
        stale.run()  # the id is not this key's node (or the SuperLink forgot it)
    assert stale.node_id is None


def test_a_packed_message_reaches_the_handler_unpacked_and_is_answered_packed():
    from client_runtime.fleet.packing import PACKED, pack

    seen = {}

    def echo(content, context):
        seen.update(content)
        return RecordDict({"a": ConfigRecord({"x": 1}), "b": ConfigRecord({"y": 2})})

    link = Link()
    agent = Agent(link, {"query": echo}, {}, settings=FAST, rng=random.Random(0))
    agent.activate()
    content = RecordDict({"c": ConfigRecord({"k": 1}), "d": ConfigRecord({"j": "v"})})
    link.send("query", pack(content))
    assert agent.poll_once()
    assert set(seen) == {"c", "d", "salt"} and seen["d"] == {"j": "v"}
    head, reply = link.reply()
    assert list(reply) == [PACKED] and len(link.objects) == 3  # Message, RecordDict, pack
    link.send("query", RecordDict({PACKED: ConfigRecord({"objects": [b"junk"]})}))
    agent.poll_once()  # a pack that is not one: the server reads why
    assert link.pushed[-1][0].error.code == 2 and "no head" in link.pushed[-1][0].error.reason


class Flaky(Link):
    """A Link that loses the connection on calls of the names in ``lose`` (each once; all
    from then on with ``forever``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lose: set[str] = set()
        self.forever = False

    def call(self, name, request, response_type, timeout=None):
        if name in self.lose:
            self.calls.append(name)
            if not self.forever:
                self.lose.discard(name)
            raise Unreachable("connection reset")
        return super().call(name, request, response_type, timeout)


def test_a_reply_cut_off_mid_push_is_held_and_pushed_again_after_reconnecting():
    link = Flaky()
    agent = make_agent(link, max_wait=30.0)
    link.send("query", RecordDict())
    link.lose = {"push-object"}  # the reply's message is in, its objects are not
    with pytest.raises(Unreachable):  # the loop reconnects on this
        agent.poll_once()
    assert agent._unsent is not None and link.calls[-1] == "push-object"
    agent._deliver()  # after reconnecting: the same reply again
    assert agent._unsent is None
    first, again = link.pushed[-2][0], link.pushed[-1][0]
    assert first.metadata.message_id == again.metadata.message_id  # one reply, never two
    _, content = link.reply()
    assert content["info"]["node"] == NODE
    link.send("query", RecordDict(), "2")
    link.lose, link.forever = {"push-messages"}, True  # away until its message expires
    with pytest.raises(Unreachable):
        agent.poll_once()
    with pytest.raises(Unreachable):
        agent._deliver()
    agent._unsent.expires = 0.0
    agent._deliver()
    assert agent._unsent is None  # dropped with a warning, not pushed forever


def test_after_a_reply_the_next_poll_is_timed_by_the_cadence():
    link = Link()
    agent = make_agent(link, poll_burst=0.04, poll_active=0.2, poll_hot=1.0, poll_lead=0.5)
    assert agent._next_poll(0) == pytest.approx(0.2)  # no run active yet: from poll_active
    link.send("query", RecordDict())
    assert agent.poll_once()
    assert agent._next_poll(0) == pytest.approx(0.04)  # no record yet: every poll_burst
    link.send("query", RecordDict(), "again")
    assert agent.poll_once()  # came right after the reply: remembered as soon
    expected = agent.cadence.expected("query")
    assert expected is not None and expected < 1.0
    assert 0.0 < agent._next_poll(0) <= max(0.5 * expected, 0.04)
