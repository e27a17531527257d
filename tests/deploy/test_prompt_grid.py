"""``PromptGrid``: Flower's send_and_receive, pulling with short growing waits."""

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
