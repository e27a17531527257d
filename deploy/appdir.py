"""The Flower App folder that ``flwr run`` submits: a ``pyproject.toml`` and nothing else.

The components point at ``deploy.serverapp:app`` and ``deploy.clientapp:app``, which fedcore
installs on the server and on every device, so the app has no dependencies of its own and
nothing is installed (or downloaded) when it runs. Its ``[tool.flwr.app.config]`` is the run
config (``deploy.settings``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

PUBLISHER = "fedcore"
APP_NAME = "fedcore-deployment"
SERVERAPP = "deploy.serverapp:app"
CLIENTAPP = "deploy.clientapp:app"


def toml_value(value: str | int | float | bool) -> str:
    """One TOML value (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def pyproject(run_config: Mapping[str, str | int | float | bool], version: str = "1.0.0") -> str:
    """The app's ``pyproject.toml`` text."""
    config = "\n".join(f"{key} = {toml_value(value)}" for key, value in run_config.items())
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{version}"
description = "A fedcore scenario deployed with flower-superlink and flower-supernode"
license = "Apache-2.0"
dependencies = []  # fedcore is installed where the apps run: nothing to install

[tool.flwr.app]
publisher = "{PUBLISHER}"

[tool.flwr.app.components]
serverapp = "{SERVERAPP}"
clientapp = "{CLIENTAPP}"

[tool.flwr.app.config]
{config}
"""


def write_app(folder: Path, run_config: Mapping[str, str | int | float | bool]) -> Path:
    """Write the app into ``folder`` (created if needed); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(pyproject(run_config), encoding="utf-8")
    return folder
