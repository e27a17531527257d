"""The names and payloads both sides of a round agree on.

A train message carries the global vector (``ArrayRecord`` under ``GLOBAL``), a
``ConfigRecord`` under ``CONFIG`` made from ``TrainInstructions`` (the same for every client
of a round, its ``TrainSettings`` flattened in) and the client's own seed under
``CLIENT_CONFIG``; the reply carries the new local vector under ``UPDATE`` and a
``MetricRecord`` under ``METRICS``. A query reply describes the client (``CLIENT_INFO``). A
compressed reply carries the codec's arrays under ``UPDATE`` and its name and options under
``CODEC`` (see ``fedcore.compression``). Plain dicts here, so this module needs no Flower
import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fedcore.settings import TrainSettings

R = TypeVar("R")

GLOBAL = "global"
UPDATE = "update"
CONFIG = "config"
METRICS = "metrics"
CLIENT_INFO = "client"
CODEC = "codec"  # ConfigRecord of a compressed reply: {"name": codec, **options}
CLIENT_CONFIG = "client-config"  # a train message's own instructions (its seed), over CONFIG

PARTITION_ID = "partition-id"  # Flower's node_config key for a simulated node's data shard
DEVICE = "device"  # node_config: the device class (catalog name) a simulated node stands for
MEMORY_BUDGET = "memory-budget"  # node_config: bytes the engine may use (default: the device's)
ADAPT_BATCH = "adapt-batch"  # node_config: halve the batch until training fits the budget


def record(content: Mapping[str, Any], key: str, kind: type[R]) -> R | None:
    """``content[key]`` when it is a ``kind`` record, else None.

    Use this, not ``RecordDict.config_records`` and its siblings: each access to those builds a
    filtered copy of every record of the message.
    """
    found = content[key] if key in content else None
    return found if isinstance(found, kind) else None


@dataclass(frozen=True)
class ModelSpec:
    """Which reference model to build, and with what arguments (JSON-serialisable)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """A stable string identifying this spec (for caches)."""
        return json.dumps({"name": self.name, "kwargs": self.kwargs}, sort_keys=True)


@dataclass(frozen=True)
class TrainInstructions:
    """What the server asks of a client in one round: the model, the training settings (the
    scenario's ``[train]`` table, see ``fedcore.settings``), the seed and the update codec."""

    round: int
    model: ModelSpec
    settings: TrainSettings
    seed: int
    compression: str = "none"  # how to send the update back (fedcore.compression.CODECS)
    compression_options: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        """Flatten into ``ConfigRecord``-compatible values (the settings' fields at top level)."""
        return {
            "round": self.round,
            "model": self.model.key(),
            **self.settings.model_dump(),
            "seed": self.seed,
            "compression": self.compression,
            "compression_options": json.dumps(self.compression_options, sort_keys=True),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainInstructions:
        """Inverse of ``to_config``; a missing key raises ``KeyError`` naming it, settings out
        of range a ``ValueError`` (``pydantic.ValidationError``) naming the field."""
        model = json.loads(str(config["model"]))
        return cls(
            round=int(config["round"]),
            model=ModelSpec(model["name"], model["kwargs"]),
            settings=TrainSettings.from_values(config),
            seed=int(config["seed"]),
            compression=str(config.get("compression", "none")),
            compression_options=json.loads(str(config.get("compression_options", "{}"))),
        )
