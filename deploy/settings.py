"""The run config of a deployed run: what ``fedcore server`` tells the ServerApp.

Flower hands ``[tool.flwr.app.config]`` of the app's ``pyproject.toml`` (with ``flwr run
--run-config`` overrides) to both apps as ``context.run_config``. Keys:

- ``scenario``: the scenario as TOML text (the ServerApp also takes a path readable where it
  runs; a device never reads a path); the ClientApp reads it too, to cut a vendored data set
  like the server does;
- ``run-id``: the stored run to record into (0: the ServerApp creates one);
- ``connect-timeout``: seconds to wait for ``federation.num_clients`` nodes; ``round-timeout``:
  seconds a round waits for replies (0: no limit); ``array-backend``: where the server averages
  (auto | cpu | gpu; the old key ``device`` is read too);
- ``enrolled``: only enrolled devices take part, each as its enrolled shard (the SuperLink
  authenticates their keys; ``fedcore server`` registered them for ``run-id``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.node import MAX_SCENARIO_BYTES, SCENARIO, NodeConfigError, scenario_text

DB = "db"
CHECKPOINTS = "checkpoints"
# The store is the server's secret (its URL may hold a password; its paths are the server's):
# every SuperNode receives the run config, so the store travels in the ServerApp's environment
# (inherited from ``flower-superlink``, which ``fedcore server`` starts), never in the config.
DB_ENV = "FEDCORE_DEPLOY_DB"
CHECKPOINTS_ENV = "FEDCORE_DEPLOY_CHECKPOINTS"
# the CA certificate that issued the devices' identities (secagg.identities), a server path
IDENTITY_CA_ENV = "FEDCORE_DEPLOY_IDENTITY_CA"
RUN_OWNER_ENV = "FEDCORE_DEPLOY_RUN_OWNER"  # host:pid of the `fedcore server` that claimed it
RUN_ID = "run-id"
CONNECT_TIMEOUT = "connect-timeout"
ROUND_TIMEOUT = "round-timeout"
ARRAY_BACKEND = "array-backend"
OLD_ARRAY_BACKEND = "device"  # its name before 2026-12; read, never written
ENROLLED = "enrolled"


class SettingsError(ValueError):
    """A run config the ServerApp cannot use (the message names the key)."""


def read_scenario(value: Any) -> str:
    """The scenario's TOML text from a run config value: the text itself or, on the server
    only (the operator's own ``flwr run --run-config``), a file's path. Devices take text only
    (``deploy.node.scenario_text``): `fedcore server` always sends the text."""
    if isinstance(value, str) and value.strip() and "\n" not in value and "=" not in value:
        path = Path(value).expanduser()
        try:
            with path.open("rb") as stream:  # bounded: a device file has no size to trust
                data = stream.read(MAX_SCENARIO_BYTES + 1)
        except OSError as exc:
            raise SettingsError(f"run config: {SCENARIO}: cannot read {path}: {exc}") from None
        if len(data) > MAX_SCENARIO_BYTES:
            raise SettingsError(f"run config: {SCENARIO}: {path} is too large")
        value = data.decode("utf-8", errors="replace")
    try:
        text = scenario_text(value)
    except NodeConfigError as exc:
        raise SettingsError(str(exc)) from None
    if text is None:
        raise SettingsError(f"run config: {SCENARIO!r} is empty: give a scenario (TOML text)")
    return text


@dataclass(frozen=True)
class DeploySettings:
    """The ServerApp's part of the run config, checked."""

    scenario: str  # TOML text
    db: str | None = None
    checkpoints: str | None = None
    run_id: int | None = None
    connect_timeout: float = 600.0
    round_timeout: float | None = 600.0
    array_backend: str = "auto"
    enrolled: bool = False
    identity_ca: str | None = None  # path of the CA certificate device identities come from
    run_owner: str | None = None  # the claim the ServerApp drives ``run_id`` under (host:pid)

    @classmethod
    def of(
        cls, run_config: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> DeploySettings:
        """Read the run config (missing keys take their defaults) and the store from
        ``environ`` (default: this process's environment). A run config that carries store
        settings is refused: every SuperNode would have received them."""
        environ = os.environ if environ is None else environ
        for key in (DB, CHECKPOINTS):
            if run_config.get(key):
                env = DB_ENV if key == DB else CHECKPOINTS_ENV
                raise SettingsError(
                    f"run config: {key!r} would be sent to every device; set {env} in the "
                    "ServerApp's environment instead"
                )
        round_timeout = _number(run_config, ROUND_TIMEOUT, 600.0)
        run_id = int(_number(run_config, RUN_ID, 0))
        return cls(
            scenario=read_scenario(run_config.get(SCENARIO)),
            db=environ.get(DB_ENV) or None,
            checkpoints=environ.get(CHECKPOINTS_ENV) or None,
            identity_ca=environ.get(IDENTITY_CA_ENV) or None,
            run_owner=environ.get(RUN_OWNER_ENV) or None,
            run_id=run_id or None,
            connect_timeout=_number(run_config, CONNECT_TIMEOUT, 600.0),
            round_timeout=round_timeout or None,
            array_backend=str(
                run_config.get(ARRAY_BACKEND) or run_config.get(OLD_ARRAY_BACKEND) or "auto"
            ),
            enrolled=bool(run_config.get(ENROLLED, False)),
        )

    def run_config(self) -> dict[str, str | int | float | bool]:
        """The run config that says this, less the store (``environment``): every device
        receives it."""
        return {
            SCENARIO: self.scenario,
            RUN_ID: self.run_id or 0,
            CONNECT_TIMEOUT: float(self.connect_timeout),
            ROUND_TIMEOUT: float(self.round_timeout or 0.0),
            ARRAY_BACKEND: self.array_backend,
            ENROLLED: self.enrolled,
        }

    def environment(self) -> dict[str, str]:
        """The ServerApp's environment variables that name the store (``of`` reads them)."""
        return {
            DB_ENV: self.db or "",
            CHECKPOINTS_ENV: self.checkpoints or "",
            IDENTITY_CA_ENV: self.identity_ca or "",
            RUN_OWNER_ENV: self.run_owner or "",
        }


def _number(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"run config: {key} must be a number, got {value!r}")
    if value < 0:
        raise SettingsError(f"run config: {key} must be >= 0, got {value}")
    return float(value)
