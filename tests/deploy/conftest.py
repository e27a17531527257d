"""The ``fleet`` fixture: one `tests.deploy.fleet.Fleet` per test, nothing left behind."""

from __future__ import annotations

import pytest

from tests.deploy.fleet import Fleet


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    left = fleet.stop_all()
    assert not left, f"processes left behind: {left}"
