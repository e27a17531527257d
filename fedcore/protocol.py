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
import math
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
# node_config: a simulated device (a population's): under SecAgg+ its masked reply carries its
# training costs and device class too, for the simulated clock (a real device never sends them)
SIMULATED = "simulated"
ADAPT_BATCH = "adapt-batch"  # node_config: halve the batch until training fits the budget
# node_config: the folder a device's operator keeps its model files in (``onnx:NAME`` resolves
# only inside it on a device; without it a device reads no model file a message names)
MODELS_DIR = "models"
# node_config: a device's identity for SecAgg+'s active-adversary checks (paths on the device:
# its enrolled signing key, its identity certificate, the operator's CA); all three or none
IDENTITY_KEY, IDENTITY_CERT, IDENTITY_CA = "identity-key", "identity-cert", "identity-ca"


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
            **self.settings.as_dict(),
            "seed": self.seed,
            "compression": self.compression,
            "compression_options": json.dumps(self.compression_options, sort_keys=True),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainInstructions:
        """Inverse of ``to_config``. The config comes from the server, so it is untrusted:
        anything missing, mistyped or out of range raises ``ValueError`` naming the key
        (settings: ``fedcore.settings.SettingsError``, a ``ValueError``, naming the field)."""
        from fedcore.compression import codec_options

        compression = _text(config, "compression", "none")
        options = _json(config, "compression_options", "{}")
        if not isinstance(options, dict):
            raise ValueError("instructions: compression_options must be a JSON object")
        try:
            options = codec_options(compression, options)
        except ValueError as exc:
            raise ValueError(f"instructions: compression: {exc}") from None
        _int(config, "local_epochs", 1, MAX_EPOCHS, default=1)
        _int(config, "batch_size", 1, MAX_BATCH, default=1)
        for key in ("learning_rate", "momentum", "weight_decay", "proximal_mu"):
            _float(config, key, default=0.0)
        return cls(
            round=_int(config, "round", 0, 2**31),
            model=model_spec(_json(config, "model")),
            settings=TrainSettings.from_values(config),
            seed=_int(config, "seed", 0, 2**64 - 1),
            compression=compression,
            compression_options=options,
        )


MAX_EPOCHS = 10_000  # local epochs a server may ask for
MAX_BATCH = 1 << 20  # examples per batch a server may ask for
MAX_SPEC_CHARS = 1 << 16  # characters of a JSON value in the instructions
_MISSING = object()


def _value(config: Mapping[str, Any], key: str, default: Any) -> Any:
    value = config.get(key, default)
    if value is _MISSING:
        raise ValueError(f"instructions: {key!r} is missing")
    return value


def _int(config: Mapping[str, Any], key: str, low: int, high: int, default: Any = _MISSING) -> int:
    value = _value(config, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"instructions: {key} must be an integer in {low}..{high}")
    return value


def _float(
    config: Mapping[str, Any],
    key: str,
    low: float = -math.inf,
    high: float = math.inf,
    default: Any = _MISSING,
) -> float:
    value = _value(config, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"instructions: {key} must be a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"instructions: {key} must be finite and in [{low}, {high}]")
    return number


def _text(config: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = _value(config, key, default)
    if not isinstance(value, str) or len(value) > MAX_SPEC_CHARS:
        raise ValueError(f"instructions: {key} must be a string of at most {MAX_SPEC_CHARS}")
    return value


def _json(config: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    try:
        return json.loads(_text(config, key, default))
    except json.JSONDecodeError as exc:
        raise ValueError(f"instructions: {key} is not JSON: {exc}") from None


def _plain(value: Any, depth: int = 0) -> bool:
    """A JSON scalar, or a list of them (one level): what a model argument may be."""
    if value is None or isinstance(value, bool | int | float | str):
        return not isinstance(value, float) or math.isfinite(value)
    return depth == 0 and isinstance(value, list) and all(_plain(v, 1) for v in value)


def model_spec(value: Any) -> ModelSpec:
    """A ``ModelSpec`` from its JSON form (``ModelSpec.key``), checked: ``ValueError`` if not
    ``{"name": str, "kwargs": {str: scalar or list of scalars}}`` (``lora``: a table of
    them)."""
    if not isinstance(value, dict) or set(value) != {"name", "kwargs"}:
        raise ValueError("instructions: model must be {'name': ..., 'kwargs': {...}}")
    name, kwargs = value["name"], value["kwargs"]
    if not isinstance(name, str) or not name:
        raise ValueError("instructions: model name must be a non-empty string")
    if not isinstance(kwargs, dict) or not all(
        isinstance(k, str) and (_plain(v) or k == "lora" and _table(v))
        for k, v in kwargs.items()
    ):
        raise ValueError("instructions: model arguments must be numbers, strings or lists")
    return ModelSpec(name, kwargs)


def _table(value: Any) -> bool:
    """A small table of plain values: the ``lora`` argument (checked in full by
    ``fedcore.nn.lora.lora_config`` before anything is built)."""
    return isinstance(value, dict) and len(value) <= 8 and all(
        isinstance(k, str) and _plain(v) for k, v in value.items())
