"""``NodeFile``: the node id outlives the agent's process, never shared with a running twin."""

from client_runtime.fleet.nodefile import NodeFile

KEY = b"-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"


def test_the_node_id_is_remembered_for_the_next_start(tmp_path):
    first = NodeFile(tmp_path / "state", "10.0.0.1:9092", KEY)
    assert first.claim() is None  # nothing yet; the folder is made
    first.remember(1723678213)
    first.release()
    again = NodeFile(tmp_path / "state", "10.0.0.1:9092", KEY)
    assert again.claim() == 1723678213
    again.remember(42)  # a new node (e.g. a fresh SuperLink): the old id is replaced
    again.release()
    assert NodeFile(tmp_path / "state", "10.0.0.1:9092", KEY).claim() == 42


def test_another_superlink_or_key_has_its_own_file(tmp_path):
    one = NodeFile(tmp_path, "a:1", KEY)
    one.claim()
    one.remember(7)
    assert NodeFile(tmp_path, "b:1", KEY).claim() is None
    assert NodeFile(tmp_path, "a:1", KEY + b"x").claim() is None


def test_a_running_agent_holds_its_file(tmp_path):
    running = NodeFile(tmp_path, "a:1", KEY)
    running.claim()
    running.remember(7)
    twin = NodeFile(tmp_path, "a:1", KEY)  # the same key started again beside it
    assert twin.claim() is None
    twin.remember(8)  # not its file: nothing written
    running.release()
    assert NodeFile(tmp_path, "a:1", KEY).claim() == 7


def test_a_damaged_file_is_no_node_id(tmp_path):
    for text in ("not json", "[7]", '{"node_id": "7"}', '{"node_id": 0}', '{"node_id": true}',
                 '{"node_id": 18446744073709551616}'):
        node = NodeFile(tmp_path, "a:1", KEY)
        node.path.write_text(text)
        assert node.claim() is None, text
        node.release()


def test_an_unusable_folder_is_no_node_id(tmp_path):
    (tmp_path / "file").write_text("")
    node = NodeFile(tmp_path / "file" / "state", "a:1", KEY)
    assert node.claim() is None
    node.remember(7)  # nothing to write to, nothing raised
