"""The hypothesis settings of every fuzzer: derandomised (the same cases on every CI run), no
example database, no deadline, no health check for slow or large draws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Settings for a fuzz test of ``examples`` cases."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
