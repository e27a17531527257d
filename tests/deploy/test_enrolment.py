"""``deploy.enrolment`` without processes: the round loop's directory and the refusal lines."""

from types import SimpleNamespace

import pytest

from aggregator.rounds import RoundFailed
from deploy.enrolment import EnrolledDirectory, Refusals, Revocations
from deploy.keys import generate_node_keys


class Grid:
    def __init__(self, *node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def device(partition, active=True):
    return SimpleNamespace(partition_id=partition, active=active)


def test_directory_maps_enrolled_connected_unrevoked_nodes_to_their_shards():
    nodes = {11: device(0), 22: device(1), 33: device(2, active=False)}
    grid = Grid(11, 22, 33, 99)  # 99: connected but not registered for this run
    directory = EnrolledDirectory(grid, lambda: nodes, min_nodes=2, connect_timeout=1)
    assert directory(1) == {0: 11, 1: 22}
    grid.node_ids = [22]  # dev 0 went away: later rounds take who is there
    assert directory(2) == {1: 22}


def test_directory_waits_for_enough_enrolled_devices_then_fails():
    directory = EnrolledDirectory(
        Grid(11), lambda: {11: device(0)}, min_nodes=2, connect_timeout=0.2, poll=0.05
    )
    with pytest.raises(RoundFailed, match="only 1 of the 2 enrolled devices"):
        directory(1)


def test_refusals_name_the_key_and_the_address_once(tmp_path):
    _, _, key = generate_node_keys(tmp_path)
    pem = key.flower_bytes.decode().replace("\n", "\\n")
    log = tmp_path / "superlink.log"
    refused = (
        "ERROR :     [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode "
        f"with public key: b'{pem}', exception: No SuperNode found with the given public key.\n"
    )
    denied = (
        '2026 INFO [uvicorn.access] 10.0.0.7:4431 - "POST /v1/fleet/pull-messages HTTP/1.1" 401\n'
    )
    log.write_text(refused + denied + denied + "partial line without newline")
    seen = Refusals(log, lambda fp: "not enrolled" if fp == key.fingerprint else "?")
    lines = seen.check()
    assert lines[1].startswith("refused a request from 10.0.0.7 (/v1/fleet/pull-messages)")
    assert lines[0] == (
        f"refused a device with key {key.fingerprint} (not enrolled): "
        "No SuperNode found with the given public key."
    )
    assert len(lines) == 2 and seen.check() == []


def test_revocations_unregister_only_this_superlinks_nodes_once(tmp_path, monkeypatch):
    from aggregator.store import Store
    from aggregator.store.enrolment import enroll, register_node, revoke
    from deploy import enrolment

    store = Store(str(tmp_path / "s.db"))
    run = store.create_run("r", "deployment", 1, {})
    for name in ("a", "b", "c"):
        enroll(store, name, f"ssh-{name}", f"SHA256:{name}")
    register_node(store, run, "a", 1)
    register_node(store, run, "b", 2)
    register_node(store, run, "c", 3)  # registered by an earlier SuperLink of this run
    calls = []
    monkeypatch.setattr(enrolment, "_flwr", lambda home, *args: calls.append(args) or {})
    watch = Revocations(store, run, tmp_path, nodes={1, 2})
    assert watch.check() == []
    revoke(store, "b")
    revoke(store, "c")
    assert watch.check() == ["revoked b (node 2): the SuperLink refuses it now"]
    assert watch.check() == []
    assert calls == [("supernode", "unregister", "2")]
