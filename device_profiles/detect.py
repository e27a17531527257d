"""Describe the machine this runs on as a ``DeviceProfile`` (RAM, cores, measured GFLOP/s).

Memory and cores come from the OS; float32 throughput is measured with a short matrix-multiply
probe; battery capacity from ``/sys/class/power_supply`` where Linux exposes it. Network and
power cannot be measured this way and are given as stated defaults.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from device_profiles.profile import DeviceProfile, Sources


def _total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _battery_wh(root: Path = Path("/sys/class/power_supply")) -> float:
    """Sum of the full-charge energy of the batteries Linux reports (0 when none)."""
    total = 0.0
    for supply in root.glob("BAT*") if root.is_dir() else []:
        energy = supply / "energy_full"
        if energy.is_file():
            total += int(energy.read_text().strip()) / 1e6  # µWh -> Wh
    return total


def measure_gflops(size: int = 512, seconds: float = 0.3) -> float:
    """float32 GFLOP/s of a ``size``-square matmul, repeated for about ``seconds``."""
    import numpy as np  # here: reading a device class (the agent's --device) needs no numpy

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.matmul(a, b, out=out)
        reps += 1
    elapsed = time.perf_counter() - start
    return 2 * size**3 * reps / elapsed / 1e9


def detect(measure: bool = True) -> DeviceProfile:
    """A profile of this machine; ``measure=False`` skips the compute probe (reports 1 GFLOP/s)."""
    ram = _total_ram_bytes()
    battery = _battery_wh()
    gflops = measure_gflops() if measure else 1.0
    return DeviceProfile(
        name="this-machine",
        display_name=f"{platform.node() or 'this machine'} ({platform.machine()})",
        kind="laptop" if battery > 0 else "server",
        ram_gib=max(ram / 2**30, 1e-3),
        app_memory_share=0.8,
        cpu_cores=os.cpu_count() or 1,
        sustained_gflops=round(gflops, 2),
        uplink_mbps=100.0,
        downlink_mbps=100.0,
        train_power_w=15.0,
        battery_wh=round(battery, 2),
        runs_cpython=True,
        source=Sources(
            spec="detected: os.sysconf, os.cpu_count, /sys/class/power_supply",
            compute="measured: float32 matmul probe" if measure else "not measured",
            network="default (not measured)",
            power="default (not measured)",
        ),
    )
