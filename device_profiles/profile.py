"""A device class as data: memory, compute, network, energy — read from TOML and checked.

Every number carries its unit in its name (``ram_gib``, ``uplink_mbps``, ``train_power_w``,
``battery_wh``); ``sustained_gflops`` is float32 throughput under sustained load, which is what
turns FLOPs counted by the engine into seconds. Each file names its sources.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("phone", "sbc", "jetson", "laptop", "server")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class ProfileError(ValueError):
    """A profile file or name is wrong; the message is one line naming the file and field."""


def _text(value: object) -> str | None:
    """What is wrong with ``value`` as a non-empty string (None: nothing)."""
    if not isinstance(value, str):
        return f"expected a string, got {_describe(value)}"
    return None if value else "must not be empty"


def _number(value: object, *, integer: bool = False, gt: float | None = None,
            ge: float | None = None, le: float | None = None) -> str | None:
    """What is wrong with ``value`` as a finite number (an integer) within its bounds."""
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return f"expected {'an integer' if integer else 'a number'}, got {_describe(value)}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    for bound, sign, ok in ((gt, ">", lambda b: value > b), (ge, ">=", lambda b: value >= b),
                            (le, "<=", lambda b: value <= b)):
        if bound is not None and not ok(bound):
            return f"must be {sign} {bound:g}, got {value!r}"
    return None


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if len(repr(value)) <= 40 else type(value).__name__


def _check(cls: type, values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The problems of ``values`` for dataclass ``cls`` (``(field, what)``, in field order):
    unknown and missing keys, then each field's own check (its ``check`` metadata)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [(prefix + key, "not a field of a device profile")
                for key in values if key not in fields]
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING:
                problems.append((prefix + name, "missing"))
            continue
        check = f.metadata.get("check")
        if check is not None and (what := check(values[name])) is not None:
            problems.append((prefix + name, what))
    return problems


def _field(check: Any, **kwargs: Any) -> Any:
    """A dataclass field checked by ``check(value) -> problem | None``."""
    return dataclasses.field(metadata={"check": check}, **kwargs)


def _raise_first(problems: list[tuple[str, str]]) -> None:
    if problems:
        field, what = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ProfileError(f"{field}: {what}{more}")


def _positive(value: object) -> str | None:
    return _number(value, gt=0)


@dataclass(frozen=True, kw_only=True)
class Sources:
    """Where each group of numbers comes from (spec sheet, benchmark, or a stated estimate)."""

    spec: str = _field(_text)
    compute: str = _field(_text)
    network: str = _field(_text)
    power: str = _field(_text)

    def __post_init__(self) -> None:
        _raise_first(_check(Sources, dataclasses.asdict(self)))


def _name(value: object) -> str | None:
    if not isinstance(value, str) or not NAME.match(value):
        return f"expected lowercase letters, digits and '-' ({NAME.pattern}), got {value!r}"
    return None


def _kind(value: object) -> str | None:
    return None if value in KINDS else f"expected one of {', '.join(KINDS)}, got {value!r}"


def _bool(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _sources(value: object) -> str | None:
    return None if isinstance(value, Sources) else f"expected a table, got {_describe(value)}"


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """One device class (checked when made: ``ProfileError`` names the first bad field)."""

    name: str = _field(_name)
    display_name: str = _field(_text)
    kind: str = _field(_kind)
    ram_gib: float = _field(_positive)
    app_memory_share: float = _field(lambda v: _number(v, gt=0, le=1))
    cpu_cores: int = _field(lambda v: _number(v, integer=True, ge=1, le=1024))
    sustained_gflops: float = _field(_positive)
    accelerator: str = _field(lambda v: None if isinstance(v, str) else _text(v), default="")
    uplink_mbps: float = _field(_positive)
    downlink_mbps: float = _field(_positive)
    train_power_w: float = _field(_positive)
    battery_wh: float = _field(lambda v: _number(v, ge=0), default=0.0)  # 0: mains powered
    runs_cpython: bool = _field(_bool)
    source: Sources = _field(_sources)

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        _raise_first(_check(DeviceProfile, values))
        for f in dataclasses.fields(self):  # 2 and 2.0 GiB are the same RAM
            if f.type == "float":
                object.__setattr__(self, f.name, float(getattr(self, f.name)))

    def as_dict(self) -> dict[str, Any]:
        """The profile as plain data (``source`` a nested dict)."""
        return dataclasses.asdict(self)

    @property
    def memory_budget_bytes(self) -> int:
        """Bytes an app may use for training on this device."""
        return int(self.ram_gib * self.app_memory_share * 2**30)

    @property
    def battery_powered(self) -> bool:
        """Whether training drains a battery (phones) or runs on mains (boards)."""
        return self.battery_wh > 0

    def compute_seconds(self, flops: float, family: str | None = None) -> float:
        """Time to execute ``flops`` float32 operations of training a ``family`` model.

        Without a family: at the stated (GEMM) speed. With one: at the share of it the engine
        reaches for that family (``device_profiles.efficiency``).
        """
        from device_profiles.efficiency import efficiency

        return flops / (self.sustained_gflops * 1e9 * efficiency(family))

    def transfer_seconds(self, bytes_up: float, bytes_down: float) -> float:
        """Time to upload ``bytes_up`` and download ``bytes_down`` at typical bandwidth."""
        return 8 * bytes_up / (self.uplink_mbps * 1e6) + 8 * bytes_down / (self.downlink_mbps * 1e6)

    def energy_joules(self, seconds: float) -> float:
        """Energy drawn while training for ``seconds`` at the training power."""
        return self.train_power_w * seconds


def parse_profile(data: dict, source: str) -> DeviceProfile:
    """Check a profile mapping (a TOML table) and make it; errors are one line naming
    ``source`` and the field."""
    problems = _check(DeviceProfile, data)
    table = data.get("source")
    if isinstance(table, dict):  # its own problems, named source.FIELD
        problems = [p for p in problems if p[0] != "source"] + _check(Sources, table, "source.")
    try:
        _raise_first(problems)
        return DeviceProfile(**{**data, "source": Sources(**table)})
    except ProfileError as exc:
        raise ProfileError(f"{source}: {exc}") from None


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Read and check one profile TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path.name}: invalid TOML: {exc}") from None
    return parse_profile(data, path.name)
