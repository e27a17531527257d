"""A run's config as the lean agent sees it: the FAB's ``[tool.flwr.app.config]`` table,
flattened, with the run's overrides (Flower's ``get_fused_config_from_fab``), read within
bounds whatever the SuperLink sends."""

from __future__ import annotations

import io
import tomllib
import zipfile
from collections.abc import Mapping
from typing import Any

from client_runtime.fleet.transport import FleetError

MAX_FAB_BYTES = 64 * 1024 * 1024
MAX_PYPROJECT_BYTES = 1 << 20


def scalar(value: Any) -> Any:
    """A Flower ``Scalar`` (run config value) as a Python value."""
    which = value.WhichOneof("scalar")
    if which is None:
        raise FleetError("run config holds an empty value")
    return getattr(value, which)


def fab_config(fab: bytes, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The run config: the FAB's ``[tool.flwr.app.config]`` flattened (``a.b`` keys), with
    the run's overrides of keys it has (Flower's ``get_fused_config_from_fab``)."""
    if len(fab) > MAX_FAB_BYTES:
        raise FleetError(f"the run's app bundle exceeds {MAX_FAB_BYTES} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as bundle:
            info = bundle.getinfo("pyproject.toml")
            if info.file_size > MAX_PYPROJECT_BYTES:
                raise FleetError("the app bundle's pyproject.toml is too large")
            with bundle.open(info) as handle:
                text = handle.read(MAX_PYPROJECT_BYTES + 1).decode("utf-8")
        table = tomllib.loads(text)
    except (KeyError, ValueError, zipfile.BadZipFile, tomllib.TOMLDecodeError) as exc:
        raise FleetError(f"the run's app bundle is unreadable: {exc}") from None
    app = table.get("tool", {}).get("flwr", {}).get("app", {})
    config = app.get("config", {}) if isinstance(app, dict) else {}
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(name, value)
            elif isinstance(value, bool | int | float | str):
                flat[name] = value

    if isinstance(config, dict):
        walk("", config)
    flat.update({k: v for k, v in overrides.items() if k in flat})
    return flat


__all__ = ["MAX_FAB_BYTES", "MAX_PYPROJECT_BYTES", "fab_config", "scalar"]
