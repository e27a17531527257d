"""A device class as data: memory, compute, network, energy — read from TOML and checked.

Every number carries its unit in its name (``ram_gib``, ``uplink_mbps``, ``train_power_w``,
``battery_wh``); ``sustained_gflops`` is float32 throughput under sustained load, which is what
turns FLOPs counted by the engine into seconds. Each file names its sources.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

KINDS = ("phone", "sbc", "jetson", "laptop", "server")

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


class ProfileError(ValueError):
    """A profile file or name is wrong; the message is one line naming the file and field."""


class Sources(BaseModel):
    """Where each group of numbers comes from (spec sheet, benchmark, or a stated estimate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(min_length=1)
    compute: str = Field(min_length=1)
    network: str = Field(min_length=1)
    power: str = Field(min_length=1)


class DeviceProfile(BaseModel):
    """One device class."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    display_name: str = Field(min_length=1)
    kind: Literal["phone", "sbc", "jetson", "laptop", "server"]
    ram_gib: Positive
    app_memory_share: Annotated[float, Field(gt=0, le=1)]
    cpu_cores: Annotated[int, Field(ge=1, le=1024)]
    sustained_gflops: Positive
    accelerator: str = ""
    uplink_mbps: Positive
    downlink_mbps: Positive
    train_power_w: Positive
    battery_wh: NonNegative = 0.0  # 0: mains powered, no battery model
    runs_cpython: bool
    source: Sources

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
    """Validate a profile mapping; errors are one line naming ``source`` and the field."""
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ProfileError(f"{source}: {field}: {first['msg']}{more}") from None


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
