"""Enrolment in the store: unique names, keys and shards; revocation; node registrations."""

import pytest

from aggregator.store import Store, StoreError
from aggregator.store.enrolment import (
    by_fingerprint,
    enroll,
    list_enrolled,
    register_node,
    registered_nodes,
    revoke,
)
from aggregator.store.models import Run


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "e.db"))


def test_enroll_assigns_shards_and_refuses_clashes(store):
    a = enroll(store, "pi-a", "ssh-a", "SHA256:a", device_class="rpi-4-2gb")
    b = enroll(store, "pi-b", "ssh-b", "SHA256:b")
    c = enroll(store, "pi-c", "ssh-c", "SHA256:c", partition_id=7)
    assert (a.partition_id, b.partition_id, c.partition_id) == (0, 1, 7)
    with pytest.raises(StoreError, match="already enrolled as 'pi-a'"):
        enroll(store, "pi-a", "ssh-x", "SHA256:x")
    with pytest.raises(StoreError, match="public key is already enrolled as 'pi-b'"):
        enroll(store, "other", "ssh-b", "SHA256:b")
    with pytest.raises(StoreError, match="already 'pi-c'"):
        enroll(store, "other", "ssh-x", "SHA256:x", partition_id=7)
    with pytest.raises(StoreError, match="device name"):
        enroll(store, "bad name", "ssh-x", "SHA256:x")
    assert [e.name for e in list_enrolled(store)] == ["pi-a", "pi-b", "pi-c"]
    assert by_fingerprint(store, "SHA256:b").name == "pi-b"
    assert by_fingerprint(store, "SHA256:zz") is None


def test_revoke_keeps_the_key_refused(store):
    enroll(store, "pi-a", "ssh-a", "SHA256:a")
    assert revoke(store, "pi-a").revoked_at is not None
    assert not by_fingerprint(store, "SHA256:a").active
    with pytest.raises(StoreError, match="already revoked"):
        revoke(store, "pi-a")
    with pytest.raises(StoreError, match="revoked"):  # re-enrolling the key needs a new key
        enroll(store, "pi-a2", "ssh-a", "SHA256:a")
    with pytest.raises(StoreError, match="no device named"):
        revoke(store, "nobody")


def test_registrations_map_nodes_to_enrolments_per_run(store):
    run = store.create_run("r", "deployment", 1, {})
    other = store.create_run("r2", "deployment", 1, {})
    enroll(store, "pi-a", "ssh-a", "SHA256:a")
    enroll(store, "pi-b", "ssh-b", "SHA256:b")
    register_node(store, run, "pi-a", 111)
    register_node(store, run, "pi-b", 222)
    register_node(store, other, "pi-a", 999)
    register_node(store, run, "pi-a", 333)  # a fresh SuperLink (resume): replaces 111
    nodes = registered_nodes(store, run)
    assert {n: e.name for n, e in nodes.items()} == {333: "pi-a", 222: "pi-b"}
    revoke(store, "pi-b")
    assert not registered_nodes(store, run)[222].active
    assert {n: e.name for n, e in registered_nodes(store, other).items()} == {999: "pi-a"}
    with store.session() as s:
        assert s.get(Run, run) is not None
