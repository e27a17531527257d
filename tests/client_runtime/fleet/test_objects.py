"""The lean agent's object tree against Flower's own deflate/inflate, byte for byte."""

import numpy as np
import pytest

from client_runtime.fleet import objects
from client_runtime.fleet.proto import message_pb2
from fedcore import records as lean

flwr_app = pytest.importorskip("flwr.app")
from flwr.app.message.message import make_message  # noqa: E402
from flwr.app.metadata import Metadata  # noqa: E402
from flwr.common.serde_utils import metadata_to_proto  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import (  # noqa: E402
    get_all_nested_objects,
    get_object_tree,
)

CONFIG = {
    "flag": True, "count": -3, "big": 2**63 + 5, "rate": 0.25, "name": "héllo", "blob": b"\x00\x01",
    "ints": [1, 2, 3], "bigs": [1, 2**64 - 1], "floats": [0.5, -1.0], "names": ["a", "b"],
    "blobs": [b"x", b""], "flags": [True, False], "empty": [],
}
METRICS = {"loss": 0.5, "n": 7, "big": 2**63, "curve": [0.1, 0.2], "counts": [1, 2], "none": []}


def arrays():
    rng = np.random.default_rng(0)
    return {
        "vector": rng.standard_normal(1000).astype(np.float32),
        "matrix": rng.standard_normal((3, 4)),
        "zeros": np.zeros(objects.CHUNK_BYTES // 4 * 2 + 10, np.float32),  # repeated chunks
        "same": rng.standard_normal(5).astype(np.float32),
        "empty": np.zeros(0, np.int64),
    }


def contents(kit):
    data = arrays()
    return kit.RecordDict({
        "arrays": kit.ArrayRecord({k: kit.Array(v) for k, v in data.items()}),
        "twin": kit.ArrayRecord({"a": kit.Array(data["same"]), "b": kit.Array(data["same"])}),
        "config": kit.ConfigRecord(dict(CONFIG)),
        "metrics": kit.MetricRecord(dict(METRICS)),
    })


def flower_message(content=None, error=None):
    meta = Metadata(run_id=7, message_id="", src_node_id=3, dst_node_id=1,
                    reply_to_message_id="abc", group_id="2", created_at=1234.5, ttl=60.0,
                    message_type="train", src_task_id=11, dst_task_id=None)
    return make_message(meta, content=content, error=error)


def test_deflate_is_flowers_byte_for_byte():
    flower = flower_message(contents(lean.flower_kit()))
    ours = objects.deflate(metadata_to_proto(flower.metadata), contents(lean.LEAN))
    theirs = {oid: obj.deflate() for oid, obj in get_all_nested_objects(flower).items()}
    assert ours.contents == theirs
    assert ours.object_id == flower.object_id
    assert ours.tree.SerializeToString() == get_object_tree(flower).SerializeToString()


def test_an_error_reply_is_flowers():
    from flwr.app import Error

    flower = flower_message(error=Error(code=2, reason="<class 'ValueError'>:<'no'>"))
    ours = objects.deflate(metadata_to_proto(flower.metadata), None, (2, flower.error.reason))
    assert ours.object_id == flower.object_id
    assert ours.contents == {flower.object_id: flower.deflate()}


def test_inflate_reads_what_flower_deflates():
    flower = flower_message(contents(lean.flower_kit()))
    pulled = {oid: obj.deflate() for oid, obj in get_all_nested_objects(flower).items()}
    tree = message_pb2.ObjectTree.FromString(get_object_tree(flower).SerializeToString())
    message, content = objects.inflate(tree, pulled, max_bytes=1 << 26)
    assert message.metadata.message_type == "train" and message.metadata.run_id == 7
    assert set(content) == {"arrays", "twin", "config", "metrics"}
    for name, array in arrays().items():
        np.testing.assert_array_equal(content["arrays"][name].numpy(), array)
    assert content["config"] == CONFIG and content["metrics"] == METRICS
    assert isinstance(content["config"], lean.ConfigRecord)


def _pulled():
    flower = flower_message(contents(lean.flower_kit()))
    pulled = {oid: obj.deflate() for oid, obj in get_all_nested_objects(flower).items()}
    tree = message_pb2.ObjectTree.FromString(get_object_tree(flower).SerializeToString())
    return tree, pulled


def test_a_tampered_object_is_refused():
    tree, pulled = _pulled()
    oid = next(iter(pulled))
    pulled[oid] = pulled[oid][:-1] + bytes([pulled[oid][-1] ^ 1])
    with pytest.raises(objects.ObjectError, match="does not match its id"):
        objects.inflate(tree, pulled, max_bytes=1 << 26)


def test_content_beyond_the_budget_is_refused():
    tree, pulled = _pulled()
    with pytest.raises(objects.ObjectError, match="budget"):
        objects.inflate(tree, pulled, max_bytes=1 << 20)


def test_an_object_of_the_wrong_type_is_refused():
    tree, pulled = _pulled()
    swapped = message_pb2.ObjectTree(object_id=tree.children[0].object_id)
    with pytest.raises(objects.ObjectError):
        objects.inflate(swapped, pulled, max_bytes=1 << 26)


def test_pull_tree_pulls_the_root_first_then_every_object_once():
    """The root (which a server pushes last) is asked alone before the rest: a device that
    sees a message early then waits on one object instead of asking for all again and again."""
    flower = flower_message(contents(lean.flower_kit()))
    stored = {oid: obj.deflate() for oid, obj in get_all_nested_objects(flower).items()}
    asked = []

    def pull(oid):
        asked.append(oid)
        return stored[oid]

    got = objects.pull_tree(get_object_tree(flower), pull, 1 << 24, workers=3)
    assert asked[0] == flower.object_id
    assert sorted(asked) == sorted(stored)
    assert got == stored
