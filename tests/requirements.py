"""Tests that need something a machine may lack: skip here, fail where CI promises it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, required_by: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it where ``$required_by`` is set to 1 (CI sets
    ``FEDCORE_REQUIRE_*`` for what it installs, so a fast path cannot silently stop binding)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(reason)
    pytest.skip(reason)
