"""Every fedcore test runs on a fresh synchronous engine with its own memory pool."""

from collections.abc import Iterator

import pytest

from fedcore.engine import Engine, NaiveEngine, use_engine


@pytest.fixture(autouse=True)
def engine() -> Iterator[Engine]:
    with use_engine(NaiveEngine()) as eng:
        yield eng
