"""``--set KEY=VALUE``: change any scenario key on the command line, validated like the file.

``KEY`` is dotted (``train.local_epochs``, ``federation.strategy_options.eta``); ``VALUE`` is
read as a TOML value (``2``, ``0.5``, ``true``, ``[32, 32]``, ``"text"``), and a bare word that
is not one (``fedadam``) is taken as a string. The result goes through the same validation
as the file, so a bad value is reported with its dotted key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["OverrideError", "apply_overrides", "parse_override"]

_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


class OverrideError(ValueError):
    """A ``--set`` item that is not ``KEY=VALUE``; the message is one line."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=2"`` -> ``(["a", "b"], 2)``."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise OverrideError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if not text or any(c in text for c in "[]{}\"'=\n"):
            raise OverrideError(f"--set {key}: {text!r} is not a TOML value") from None
        value = text  # a bare word: a string
    return key.split("."), value


def apply_overrides(raw: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """A copy of the scenario tables ``raw`` with each ``KEY=VALUE`` of ``items`` laid over."""
    out: dict[str, Any] = _copy(raw)
    for item in items:
        path, value = parse_override(item)
        table = out
        for i, part in enumerate(path[:-1]):
            inner = table.get(part)
            if inner is None:
                inner = table[part] = {}
            if not isinstance(inner, dict):
                where = ".".join(path[: i + 1])
                raise OverrideError(f"--set {'.'.join(path)}: {where} is a value, not a table")
            table = inner
        table[path[-1]] = value
    return out


def _copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
