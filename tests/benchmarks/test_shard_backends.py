"""``benchmarks.shard_backends``: every mode timed, the process-wide settings restored."""

import pytest

from fedcore.engine.parallel import get_num_threads
from fedcore.nn import shards

pytest.importorskip("torch")


def test_every_mode_is_timed_and_the_settings_come_back():
    from benchmarks.shard_backends import measure

    threads, backend = get_num_threads(), shards.BACKEND
    med = measure("cnn", reps=1, gap=0.0)
    assert set(med) == {"fedcore 1", "fedcore 2 threads", "fedcore 2 processes", "torch 1",
                        "torch 2"}
    assert all(ms > 0 for ms in med.values())
    assert (get_num_threads(), shards.BACKEND) == (threads, backend)
