"""Secure aggregation in scenario files: ``federation.secagg`` and the ``[secagg]`` table.

Either switches SecAgg+ on for every round (per run, ``fedcore simulate --secagg`` /
``--no-secagg`` override the file)::

    [federation]
    secagg = true           # defaults for everything below

    [secagg]                # optional overrides (the table alone also switches it on)
    k = 8                   # neighbours per client (default: derived from n, see below)
    t = 5                   # shares needed to unmask (default: derived)
    dropout = 0.1           # fraction of clients that may drop out
    corruption = 0.05       # fraction that may collude with the server
    security_bits = 40      # privacy failure probability <= 2^-40 per round
    correctness_bits = 20   # abort probability <= 2^-20 per round
    clip = 8.0              # bound on each coordinate of an update (local - global)
    max_weight = 120        # examples a client's weight counts at most (default: the largest
                            # partition of the scenario, so FedAvg weights are exact)
    identities = true       # devices hold identities: signed keys and the consistency check
                            # against a malicious server (a simulation makes a CA per run;
                            # a deployment uses the operator's, see README "Threat model")

n is ``federation.clients_per_round``; the derivation of k and t is in
``fedcore.secagg.params``. Only strategies whose rule takes a sum in place of the updates work
(``Strategy.takes_sums``: fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad among the
built-ins), with ``compression = "none"``. The norm guard does not run (the server sees no
single update; ``clip`` bounds each one instead): a ``max_norm_factor`` set on purpose is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt
from pydantic_core import PydanticCustomError

from aggregator.collect.secagg import secure_strategies
from aggregator.secagg.config import SecAggConfig
from aggregator.strategies import build_strategy

if TYPE_CHECKING:
    from aggregator.round_types import FederationConfig
    from simulations.scenario import Scenario

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class SecAggSection(BaseModel):
    """The ``[secagg]`` table: overrides of the SecAgg+ parameters (all optional)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    k: PositiveInt | None = None
    t: PositiveInt | None = None
    dropout: Fraction = SecAggConfig.dropout
    corruption: Fraction = SecAggConfig.corruption
    security_bits: PositiveFloat = SecAggConfig.security_bits
    correctness_bits: PositiveFloat = SecAggConfig.correctness_bits
    clip: PositiveFloat = SecAggConfig.clip
    max_weight: PositiveFloat | None = None
    identities: bool = False


def switch_on_with_table(raw: Any) -> Any:
    """Before validation: a ``[secagg]`` table sets ``federation.secagg = true`` (so a stored
    scenario says so); an explicit ``false`` next to the table is a contradiction."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("secagg"), Mapping):
        return raw
    federation = raw.get("federation")
    if not isinstance(federation, Mapping):
        return raw
    if federation.get("secagg", True) is False:
        raise PydanticCustomError(
            "scenario", "false, but a [secagg] table is given", {"key": "federation.secagg"}
        )
    return {**raw, "federation": {**federation, "secagg": True}}


def secagg_enabled(scenario: Scenario) -> bool:
    """Whether the scenario runs secure aggregation."""
    return scenario.federation.secagg or scenario.secagg is not None


def secagg_config(scenario: Scenario, largest_partition: int | None = None) -> SecAggConfig | None:
    """The round loop's settings for ``scenario`` (None when secure aggregation is off)."""
    if not secagg_enabled(scenario):
        return None
    section = scenario.secagg or SecAggSection()
    values: dict[str, Any] = section.model_dump()
    if values["max_weight"] is None:
        values["max_weight"] = float(largest_partition or SecAggConfig.max_weight)
    values["require_identities"] = values.pop("identities")
    return SecAggConfig(**values)


def simulated_identities(config: FederationConfig) -> tuple[FederationConfig, Any]:
    """A simulation's CA, when its SecAgg+ requires identities: ``(config with the server's
    side of it, credentials(context) for the ClientApp)``; else ``(config, None)``."""
    from dataclasses import replace
    from functools import partial

    from aggregator.secagg.keybook import Identities
    from fedcore.secagg.identity import SimulatedAuthority

    if config.secagg is None or not config.secagg.require_identities:
        return config, None
    authority = SimulatedAuthority.create()
    secagg = replace(config.secagg, identities=Identities(authority.authority()))
    return replace(config, secagg=secagg), partial(_simulated_credentials, authority)


def _simulated_credentials(authority: Any, context: Any) -> Any:
    from fedcore import protocol

    return authority.credentials(int(context.node_config[protocol.PARTITION_ID]))


def secagg_misfit(scenario: Scenario) -> tuple[str, str] | None:
    """``(dotted key, reason)`` if the scenario cannot run secure aggregation, else None."""
    fed = scenario.federation
    if not secagg_enabled(scenario):
        return None
    if not _takes_sums(fed.strategy, fed.strategy_options):
        return "federation.strategy", (
            f"{fed.strategy!r} needs individual updates; secure aggregation works with "
            f"strategies whose rule takes a sum ({', '.join(secure_strategies())})"
        )
    if fed.compression != "none":
        return "federation.compression", "secure aggregation sends dense masked vectors: none"
    if fed.strategy_options.get("max_norm_factor", 0):  # set on purpose; the default is moot
        return "federation.strategy_options.max_norm_factor", (
            "the norm guard judges single updates, which secure aggregation never shows the "
            "server; secagg.clip bounds them instead (set it to 0, or secagg = false)"
        )
    n = fed.clients_per_round or fed.num_clients
    if n < 2:
        return "federation.clients_per_round", "secure aggregation needs at least 2 clients"
    section = scenario.secagg or SecAggSection()
    if section.k is not None and section.t is not None and section.t > section.k:
        return "secagg.t", f"{section.t} is more than secagg.k ({section.k})"
    try:
        secagg_config(scenario).params_for(n)  # type: ignore[union-attr]
    except ValueError as exc:
        return "secagg", str(exc)
    return None


def _takes_sums(name: str, options: Mapping[str, Any]) -> bool:
    """Whether strategy ``name`` can aggregate a secure sum (its rule says so)."""
    try:
        return build_strategy(name, dict(options)).takes_sums
    except ValueError:
        return True  # a bad name or option is reported by its own check
