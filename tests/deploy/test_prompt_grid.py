"""``PromptGrid``: Flower's send_and_receive, pulling with short growing waits."""

import time
from types import SimpleNamespace

from deploy.prompt_grid import PromptGrid


class Scripted:
    """A grid whose replies come in over several pulls."""

    def __init__(self, batches):
        self.batches, self.pulls = list(batches), 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        batch = self.batches.pop(0) if self.batches else []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
                for i in batch if i in ids]


def replied(replies):
    return sorted(r.metadata.reply_to_message_id for r in replies)


def test_all_replies_are_collected_as_they_come():
    inner = Scripted([[], ["m1"], [], ["m0", "m2"]])
    grid = PromptGrid(inner, first=0.001, longest=0.002)
    assert replied(grid.send_and_receive(["a", "b", "c"], timeout=60)) == ["m0", "m1", "m2"]
    assert inner.pulls == 4


def test_the_timeout_ends_the_wait_with_what_came():
    inner = Scripted([["m0"]])
    grid = PromptGrid(inner, first=0.001, longest=0.002)
    assert replied(grid.send_and_receive(["a", "b"], timeout=0.05)) == ["m0"]


class Runtime:
    """A SuperLink's Runtime API with one reply in: its first object is unavailable to the
    first ``late`` tries (the device is still pushing it)."""

    def __init__(self, reply, late):
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto
        from flwr.supercore.inflatable.inflatable_object import (
            get_all_nested_objects,
            get_object_tree,
        )

        self.proto = message_to_proto(remove_content_from_message(reply))
        self.tree = get_object_tree(reply)
        self.contents = {i: o.deflate() for i, o in get_all_nested_objects(reply).items()}
        self.late_id, self.late, self.tries, self.confirmed = next(iter(self.contents)), late, 0, []

    def PullMessages(self, request):  # noqa: N802 (Flower's names)
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse

        return PullAppMessagesResponse(messages_list=[self.proto],
                                       message_object_trees=[self.tree])

    def PullObject(self, request):  # noqa: N802
        from flwr.proto.message_pb2 import PullObjectResponse

        if request.object_id == self.late_id:
            self.tries += 1
            if self.tries <= self.late:
                return PullObjectResponse(object_found=True, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True,
                                  object_content=self.contents[request.object_id])

    def ConfirmMessageReceived(self, request):  # noqa: N802
        self.confirmed.append(request.message_object_id)


def http_grid(late):
    """A real ``HttpGrid`` on a scripted Runtime API, and the reply it holds."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Metadata, RecordDict
    from flwr.app.message import make_message
    from flwr.supercore.run import Run
    from flwr.superlink.grid import HttpGrid

    reply = make_message(
        metadata=Metadata(run_id=3, message_id="", src_node_id=7, dst_node_id=0,
                          reply_to_message_id="m0", group_id="1", created_at=1.0, ttl=60.0,
                          message_type="train"),
        content=RecordDict({"update": ArrayRecord([np.arange(5, dtype=np.float32)]),
                            "config": ConfigRecord({"round": 1})}))
    reply.metadata.__dict__["_message_id"] = reply.object_id
    grid = HttpGrid(token="t")
    grid.set_run(Run.create_empty(3))
    grid._client = Runtime(reply, late)
    return grid, reply


def test_a_reply_whose_objects_are_still_coming_is_pulled_with_short_waits():
    from deploy.prompt_grid import pull_promptly

    grid, sent = http_grid(late=3)
    [got] = PromptGrid(grid, first=0.001, longest=0.002).pull_messages(["m0"])
    assert grid._client.tries == 4 and grid._client.confirmed == [sent.object_id]
    assert got.metadata.reply_to_message_id == "m0" and not got.has_error()
    assert got.content["update"].to_numpy_ndarrays()[0].tolist() == [0, 1, 2, 3, 4]
    assert got.content["config"]["round"] == 1
    grid, _ = http_grid(late=10**6)  # the objects never come within its patience: an error
    [failed] = pull_promptly(grid, ["m0"], 0.001, 0.002, patience=0.05)
    assert failed.has_error() and failed.metadata.reply_to_message_id == "m0"
    assert grid._client.confirmed == []


def test_pushed_messages_carry_their_small_records_packed_and_replies_come_unpacked():
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client_runtime.fleet.packing import PACKED, pack
    from deploy.prompt_grid import packed

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 3, 0
    content = RecordDict({"global": ArrayRecord([np.arange(4, dtype=np.float32)]),
                          "config": ConfigRecord({"round": 1})})
    message = Message(content, dst_node_id=7, message_type="train", ttl=30.0, group_id="2")
    out = packed(message)
    assert list(out.content) == [PACKED] and list(message.content) == ["global", "config"]
    meta = out.metadata
    assert (meta.dst_node_id, meta.message_type, meta.ttl, meta.group_id) == (7, "train", 30.0, "2")
    grid, reply = http_grid(late=0)  # a reply that comes packed is unpacked
    reply.content = pack(reply.content)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    grid._client = Runtime(reply, 0)
    [got] = PromptGrid(grid, first=0.001, longest=0.002).pull_messages(["m0"])
    assert set(got.content) == {"update", "config"} and got.content["config"]["round"] == 1
    reply.content = RecordDict({PACKED: ConfigRecord({"objects": [b"junk"]})})
    reply.metadata.__dict__["_message_id"] = reply.object_id
    grid._client = Runtime(reply, 0)
    [bad] = PromptGrid(grid, first=0.001, longest=0.002).pull_messages(["m0"])
    assert bad.has_error() and "not valid" in bad.error.reason


def test_the_async_courier_gives_up_a_reply_whose_objects_never_come_by_its_deadline():
    from aggregator.couriers import DeadlineGrid, LiveCourier

    grid, _ = http_grid(late=10**6)  # the reply's first object never becomes available
    prompt_grid = PromptGrid(grid, first=0.001, longest=0.002)
    assert isinstance(prompt_grid, DeadlineGrid)
    courier = LiveCourier(prompt_grid, poll=0.001, timeout=0.2)
    courier.pending["m0"] = (time.monotonic(), None)
    _, reply = courier.receive()  # by the deadline, not after Flower's two hours of asking
    assert reply.has_error() and "unavailable" in reply.error.reason
    assert grid._client.confirmed == [] and not courier.pending
