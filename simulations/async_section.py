"""Asynchronous training in scenario files: ``[federation] mode = "async"`` (FedBuff).

::

    [federation]
    mode = "async"
    concurrency = 20        # clients training at once (default: clients_per_round)
    buffer = 10             # contributions per server step (default: clients_per_round)
    max_staleness = 20      # older contributions are rejected (default: none are)
    staleness = { kind = "polynomial", exponent = 0.5 }   # or "constant", or
                            # { kind = "hinge", exponent = 0.5, hinge = 10 }

``rounds`` counts server steps. The strategy's rule, server optimizer and wrappers apply to
each step (``aggregator.asynchronous``). SecAgg+ needs a round's fixed set of clients and is
refused with async.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat

from aggregator.staleness import AsyncConfig, Staleness

if TYPE_CHECKING:
    from simulations.scenario import FederationConfig

Mode = Literal["sync", "async"]


class StalenessSection(BaseModel):
    """``federation.staleness``: how a contribution ``s`` steps old is weighted."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    exponent: PositiveFloat = Field(default=0.5, le=10.0)
    hinge: NonNegativeInt = 10


def async_problem(federation: FederationConfig, secagg: bool) -> tuple[str, str] | None:
    """``(key, message)`` when the async settings do not fit together, else None."""
    if federation.mode == "sync":
        for key in ("concurrency", "buffer", "max_staleness"):
            if getattr(federation, key) is not None:
                return f"federation.{key}", 'only used with mode = "async"'
        return None
    if secagg:
        return ("federation.mode", "SecAgg+ needs a fixed set of clients per round: "
                "asynchronous training runs without secure aggregation")
    concurrency = federation.concurrency or federation.clients_per_round
    buffer = federation.buffer or federation.clients_per_round
    if concurrency > federation.num_clients:
        return ("federation.concurrency",
                f"{concurrency} is more than federation.num_clients ({federation.num_clients})")
    if buffer > concurrency:
        return ("federation.buffer",
                f"{buffer} is more than federation.concurrency ({concurrency}): "
                "a step could never fill")
    return None


def async_config(federation: FederationConfig) -> AsyncConfig | None:
    """The aggregator's settings for an async scenario (None when synchronous)."""
    if federation.mode == "sync":
        return None
    s = federation.staleness
    return AsyncConfig(
        concurrency=federation.concurrency or federation.clients_per_round,
        buffer=federation.buffer or federation.clients_per_round,
        staleness=Staleness(s.kind, s.exponent, s.hinge),
        max_staleness=federation.max_staleness,
    )
