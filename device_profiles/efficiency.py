"""How much of a device's stated GEMM speed the engine reaches, per model family.

Device classes state sustained float32 GFLOP/s from HPL-class benchmarks: an optimised GEMM.
Training reaches a fraction of that (small products, im2col, elementwise kernels, Python between
kernels). ``efficiency.toml`` beside this file stores that fraction per model family, measured
by ``fedcore profiles calibrate --write`` on a real machine; the virtual clock divides a
client's FLOPs by ``sustained_gflops x efficiency``.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from device_profiles.profile import ProfileError

EFFICIENCY_FILE = Path(__file__).with_name("efficiency.toml")
#: families the clock knows; a model of none of them is timed as the closest (see ``family``)
FAMILIES = ("mlp", "cnn", "rnn", "transformer")


@cache
def efficiencies(path: Path = EFFICIENCY_FILE) -> dict[str, float]:
    """Family -> efficiency in (0, 1], read and checked once per process."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = "run: fedcore profiles calibrate --write"
        raise ProfileError(f"{path}: no such file ({hint})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path.name}: invalid TOML: {exc}") from None
    table = data.get("efficiency")
    if not isinstance(table, dict) or not table:
        raise ProfileError(f"{path.name}: efficiency: missing table")
    out: dict[str, float] = {}
    for family, value in table.items():
        if family not in FAMILIES:
            raise ProfileError(f"{path.name}: efficiency.{family}: unknown family "
                               f"(known: {', '.join(FAMILIES)})")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ProfileError(f"{path.name}: efficiency.{family}: must be a number in (0, 1]")
        out[family] = float(value)
    return out


def efficiency(family: str | None) -> float:
    """The engine's efficiency for ``family``; 1.0 (GEMM speed) when no family is given.

    A family the file does not list (e.g. ``transformer`` before it was measured) falls back to
    ``mlp``: both are mostly dense products.
    """
    if family is None:
        return 1.0
    table = efficiencies()
    if family in table:
        return table[family]
    if family not in FAMILIES:
        raise ProfileError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    return table["mlp"]
