"""``fleet.packing``: a message's small records as one object, checked when unpacked."""

import numpy as np
import pytest

from client_runtime.fleet import objects, packing
from client_runtime.fleet.packing import OBJECTS, PACK_RECORD_MAX, PACKED, pack, unpack
from client_runtime.fleet.proto import message_pb2
from fedcore.records import LEAN, flower_kit
from fedcore.wire import vector_record

KITS = [LEAN, flower_kit()]


def train_content(kit, size=100):
    return kit.RecordDict({
        "global": vector_record(np.arange(size, dtype=np.float32), kit),
        "config": kit.ConfigRecord({"round": 3, "lr": 0.1, "tag": "x", "raw": b"\x00\x01"}),
        "client-config": kit.ConfigRecord({"seed": 2**40}),
        "metrics": kit.MetricRecord({"loss": 0.5, "sizes": [1, 2]}),
    })


def same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for name in a:
        if hasattr(a[name], "values") and name == "global":
            assert a[name]["vector"].data == b[name]["vector"].data
            assert tuple(a[name]["vector"].shape) == tuple(b[name]["vector"].shape)
        else:
            assert dict(a[name]) == dict(b[name])


def lean(content):
    return LEAN.RecordDict({n: packing._convert(r, LEAN) for n, r in content.items()})


def objects_of(content):
    meta = message_pb2.Metadata(run_id=1, message_type="train")
    return len(objects.deflate(meta, content).contents)


@pytest.mark.parametrize("kit", KITS, ids=["lean", "flower"])
def test_small_records_travel_as_one_object_and_come_back_the_same(kit):
    content = train_content(kit)
    packed = pack(content)
    assert list(packed) == [PACKED] and isinstance(packed, kit.RecordDict)
    # Message, RecordDict, ArrayRecord, Array, ArrayChunk, two ConfigRecords, a MetricRecord
    assert objects_of(lean(content)) == 8 and objects_of(lean(packed)) == 3
    back, was_packed = unpack(packed)
    assert was_packed and isinstance(back, kit.RecordDict)
    assert isinstance(back["config"], kit.ConfigRecord)
    assert isinstance(back["metrics"], kit.MetricRecord)
    same(back, content)
    assert unpack(content) == (content, False)  # unpacked content passes through


def test_a_pack_holds_the_objects_flower_itself_writes_and_reads():
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    flower = flower_kit()
    packed = pack(train_content(flower))[PACKED][OBJECTS]
    small = flower.RecordDict(dict(train_content(flower)))
    assert packed == [o.deflate() for o in get_all_nested_objects(small).values()]
    contents = {objects.object_id(o): o for o in packed}
    inflated = inflate_object_from_contents(objects.object_id(packed[-1]), contents)
    same(inflated, train_content(flower))
    assert pack(train_content(LEAN))[PACKED][OBJECTS] == packed  # the same bytes either side


def test_large_records_stay_themselves_and_one_small_record_is_not_packed():
    big = PACK_RECORD_MAX // 4 + 1  # float32s: over the limit
    packed = pack(train_content(LEAN, size=big))
    assert set(packed) == {"global", PACKED}  # a large model's arrays stay shared and chunked
    back, _ = unpack(packed)
    same(back, train_content(LEAN, size=big))
    single = LEAN.RecordDict({"config": LEAN.ConfigRecord({"a": 1})})
    assert pack(single) is single
    with pytest.raises(ValueError, match="reserved"):
        pack(LEAN.RecordDict({PACKED: LEAN.ConfigRecord({"a": 1})}))


def hostile(change):
    packed = pack(train_content(LEAN))
    items = list(packed[PACKED][OBJECTS])
    return LEAN.RecordDict({PACKED: LEAN.ConfigRecord(change(items))})


@pytest.mark.parametrize("change, reason", [
    (lambda items: {OBJECTS: items, "more": 1}, "not a pack"),
    (lambda items: {OBJECTS: "text"}, "not a pack"),
    (lambda items: {OBJECTS: []}, "0 objects"),
    (lambda items: {OBJECTS: items[1:]}, "missing"),  # a record's object left out
    (lambda items: {OBJECTS: [items[0] + b"x", *items[1:]]}, "missing|body"),
    (lambda items: {OBJECTS: [b"ConfigRecord  0\x00", *items]}, "does not hold"),
    (lambda items: {OBJECTS: [items[0]]}, "expected a 'RecordDict'"),
], ids=["extra key", "not bytes", "empty", "left out", "altered", "left over", "no root"])
def test_a_pack_that_is_not_one_is_refused_with_the_reason(change, reason):
    with pytest.raises(ValueError, match=reason):
        unpack(hostile(change))


def test_a_pack_cannot_shadow_a_record_or_nest_another_or_exceed_the_budget():
    packed = pack(train_content(LEAN))
    clash = LEAN.RecordDict({**packed, "config": LEAN.ConfigRecord({"a": 1})})
    with pytest.raises(ValueError, match="twice"):
        unpack(clash)
    nested = objects.deflate_recorddict(LEAN.RecordDict({PACKED: LEAN.ConfigRecord({"a": 1})}))
    with pytest.raises(ValueError, match="twice"):
        unpack(LEAN.RecordDict({PACKED: LEAN.ConfigRecord({OBJECTS: nested})}))
    with pytest.raises(ValueError, match="budget"):
        unpack(packed, max_bytes=100)


def test_the_clientapp_mod_unpacks_the_message_and_packs_the_reply():
    from flwr.app import Message
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    seen = {}

    def handler(msg, context):
        seen.update(msg.content)
        return Message(train_content(flower_kit()), reply_to=msg)

    flower = flower_kit()
    msg = Message(pack(train_content(flower)), dst_node_id=3, message_type="train")
    reply = packing.packing_mod(msg, None, handler)
    assert set(seen) == {"global", "config", "client-config", "metrics"}
    assert list(reply.content) == [PACKED]
    plain = Message(flower.RecordDict({"c": flower.ConfigRecord({"a": 1})}), dst_node_id=3,
                    message_type="query")
    assert list(packing.packing_mod(plain, None, handler).content) != [PACKED]
