"""Reading a scenario: a TOML file or nested dicts in, a validated `Scenario` or one line out."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulations.scenario.errors import ScenarioError, describe, format_error, one_line
from simulations.scenario.schema import Scenario


def load_scenario(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Scenario:
    """Read and validate a scenario TOML file, with ``--set KEY=VALUE`` ``overrides`` laid
    over it first (``simulations.overrides``); any problem raises a one-line `ScenarioError`."""
    source = os.fspath(path)
    try:
        with Path(path).open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ScenarioError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{source}: is a directory, not a scenario file") from None
    except OSError as error:
        raise ScenarioError(f"{source}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{source}: invalid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{source}: invalid TOML: {one_line(str(error))}") from None
    overrides = list(overrides)
    if overrides:
        from simulations.overrides import OverrideError, apply_overrides

        try:
            raw = apply_overrides(raw, overrides)
        except OverrideError as error:
            raise ScenarioError(str(error)) from None
    return scenario_from_dict(raw, source=source)


def scenario_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Scenario:
    """Validate a scenario given as nested dicts (what the TOML parser yields)."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: expected a table of keys, got {describe(data)}")
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as error:
        raise ScenarioError(format_error(error, source, Scenario)) from None


def with_secagg(scenario: Scenario, on: bool) -> Scenario:
    """``scenario`` with secure aggregation switched on or off (validated again)."""
    raw = scenario.model_dump(mode="json")
    raw["federation"]["secagg"] = on
    if not on or raw.get("secagg") is None:
        raw.pop("secagg", None)
    return scenario_from_dict(raw, source=scenario.name)
