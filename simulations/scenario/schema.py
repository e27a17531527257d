"""The scenario file's schema: one pydantic model per table, checks of the file alone.

Validating a scenario reads no data and builds no model (``simulations.prepare`` does that,
once); what can be checked from the file is checked here: types and ranges (``strict``,
``extra="forbid"``), known names, and relations between keys. This module has the whole file
(``Scenario``) and its ``[federation]`` and ``[evaluation]`` tables; ``[data]`` is
``data_section``'s, ``[model]`` ``model_section``'s. The ``[train]`` table is
``fedcore.settings.TrainSettings``, the type the server sends and the device trains with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aggregator.strategies import known_strategies, strategy_options, strategy_spec
from fedcore.compression import CODECS, codec_options
from fedcore.objectives import objective
from fedcore.resolve import ResolveError, is_reference
from fedcore.settings import SettingsError, TrainSettings
from simulations.async_section import Mode, StalenessSection, async_problem
from simulations.population import PopulationSection, population_defaults
from simulations.scenario.data_section import NATURAL_DATASETS, DataSection, Fraction
from simulations.scenario.errors import fail as _fail
from simulations.scenario.errors import one_of as _one_of
from simulations.scenario.errors import resolved as _resolved
from simulations.scenario.model_section import ModelSection
from simulations.scenario.section import Section
from simulations.secagg_section import SecAggSection, secagg_misfit, switch_on_with_table

KNOWN_CODECS: tuple[str, ...] = tuple(CODECS)


class FederationSection(Section):
    """How many clients exist, how many train each round, for how many rounds, and how the
    server combines their updates."""

    num_clients: PositiveInt
    clients_per_round: PositiveInt | None = Field(default=None, validate_default=True)
    rounds: PositiveInt
    strategy: str = "fedavg"
    strategy_options: dict[str, bool | int | float | str] = Field(default_factory=dict)
    compression: str = "none"
    compression_options: dict[str, int | float] = Field(default_factory=dict)
    secagg: bool = False  # secure aggregation (SecAgg+); see also the [secagg] table
    # the most examples one client's reply may count (a cap on any one client's weight; it
    # may never claim more than it declared either); None: aggregator.decode's default
    max_examples: PositiveInt | None = None
    mode: Mode = "sync"  # "async": buffered asynchronous training (async_section.py)
    concurrency: PositiveInt | None = None
    buffer: PositiveInt | None = None
    max_staleness: NonNegativeInt | None = None
    staleness: StalenessSection = StalenessSection()

    @field_validator("clients_per_round")
    @classmethod
    def _at_most_all(cls, value: int | None, info: ValidationInfo) -> int | None:
        total = info.data.get("num_clients")
        if value is None:
            return total
        if total is not None and value > total:
            raise PydanticCustomError(
                "scenario", f"{value} is more than federation.num_clients ({total})"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if not is_reference(value) and value not in known_strategies():  # registered now
            return _one_of("strategy", value, known_strategies())
        return _resolved(value, strategy_spec)

    @field_validator("compression")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        return _one_of("compression", value, KNOWN_CODECS)

    @model_validator(mode="after")
    def _async_fits(self) -> Self:
        problem = async_problem(self, self.secagg)
        if problem is not None:
            raise _fail(*problem)
        return self

    @model_validator(mode="after")
    def _options_fit(self) -> Self:
        """Strategy and compression options are checked by the aggregator and the codecs."""
        try:
            strategy_options(self.strategy, self.strategy_options)
        except ValueError as error:
            raise _fail("federation.strategy_options", str(error)) from None
        try:
            codec_options(self.compression, self.compression_options)
        except ValueError as error:
            raise _fail("federation.compression_options", str(error)) from None
        return self


class EvaluationSection(Section):
    """Federated evaluation: every ``every`` rounds (and after the last), ``fraction`` of the
    clients evaluate the global model on the ``local_test`` share of their examples, which
    they hold out of training (stratified by label). ``server = false`` skips the server's
    own test set (a deployment needs none)."""

    every: PositiveInt = 1
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    local_test: Fraction = 0.2
    server: bool = True


def _train_table(raw: object) -> TrainSettings:
    """``[train]`` checked by the settings type itself (``fedcore.settings``: no pydantic on a
    device), its error named by the dotted key like any other."""
    if isinstance(raw, TrainSettings):
        return raw
    try:
        return TrainSettings.from_table(raw)
    except SettingsError as exc:
        raise _fail(f"train.{exc.key}" if exc.key else "train", exc.message) from None


class Scenario(Section):
    """A validated scenario. ``model_dump()`` gives plain JSON-ready data (defaults filled in)
    to store with a run; ``Scenario.model_validate`` of that dump gives the scenario back."""

    name: Annotated[str, Field(min_length=1)]
    seed: NonNegativeInt = 0
    data: DataSection
    model: ModelSection
    federation: FederationSection
    train: Annotated[TrainSettings, BeforeValidator(_train_table)] = TrainSettings()
    evaluation: EvaluationSection | None = None  # federated evaluation on the clients
    secagg: SecAggSection | None = None
    population: PopulationSection | None = None  # simulated devices (simulations/population.py)

    @model_validator(mode="before")
    @classmethod
    def _population_size(cls, raw: Any) -> Any:
        """``population.size`` is ``federation.num_clients`` (either may give it)."""
        return population_defaults(raw)

    @model_validator(mode="before")
    @classmethod
    def _secagg_switch(cls, raw: Any) -> Any:
        """A ``[secagg]`` table switches ``federation.secagg`` on."""
        return switch_on_with_table(raw)

    @model_validator(mode="before")
    @classmethod
    def _natural_clients(cls, raw: Any) -> Any:
        """Default ``data.<dataset>.num_clients`` (synthetic, shakespeare) to
        ``federation.num_clients`` (made explicit so a stored scenario says how its data was
        made)."""
        if not isinstance(raw, Mapping):
            return raw
        data, federation = raw.get("data"), raw.get("federation")
        if not (isinstance(data, Mapping) and isinstance(federation, Mapping)):
            return raw
        name = data.get("dataset")
        if name not in NATURAL_DATASETS:
            return raw
        population = raw.get("population")
        if isinstance(population, Mapping) and population.get("generate") is True:
            return raw  # generated clients: data.<name>.num_clients is the test set's
        section = data.get(name, {})
        clients = federation.get("num_clients")
        if (
            isinstance(section, Mapping)
            and "num_clients" not in section
            and type(clients) is int
            and clients > 0
        ):
            section = {**section, "num_clients": clients}
            raw = {**raw, "data": {**data, name: section}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Relations between tables that the file alone settles (no data is read)."""
        clients = self.federation.num_clients
        name, section = self.data.dataset, self.data.dataset_section
        generated = self.population is not None and self.population.generate
        if generated and name != "synthetic":
            raise _fail("population.generate", f"only synthetic data is generated, not {name!r}")
        if generated and (section is None or section.num_clients is None):
            raise _fail(
                "data.synthetic.num_clients",
                "required with population.generate (the generators of the server's test set)",
            )
        natural = self.data.partition == "natural" and not generated
        if natural and section and section.num_clients != clients:
            what = "generator" if name == "synthetic" else "role"
            raise _fail(
                f"data.{name}.num_clients",
                f"the natural partition needs one {what} per client: {section.num_clients} "
                f"!= federation.num_clients ({clients})",
            )
        for key in TrainSettings.from_strategy():
            if getattr(self.train, key) != TrainSettings.default(key):
                where = TrainSettings.set_by(key)
                hint = (
                    "set by the strategy, not here (e.g. federation.strategy = 'fedprox' with "
                    f"federation.strategy_options.{key})"
                    if where.startswith("federation")
                    else f"set by {where}, not here"
                )
                raise _fail(f"train.{key}", hint)
        try:
            objective(self.train.loss)
        except ResolveError as exc:
            raise _fail("train.loss", str(exc)) from None
        if self.train.optimizer != "sgd" and self.train.momentum:
            raise _fail("train.momentum", "only used by optimizer 'sgd' (adam has its own)")
        misfit = secagg_misfit(self)
        if misfit:
            raise _fail(*misfit)
        return self

    @property
    def train_settings(self) -> TrainSettings:
        """``[train]`` as clients get it: with ``[evaluation] local_test`` when there is one."""
        if self.evaluation is None:
            return self.train
        return self.train.with_values({"local_test": self.evaluation.local_test})

    @property
    def clients_with_data(self) -> int:
        """Clients the training pool is split among (1 when each generates its own data)."""
        generated = self.population is not None and self.population.generate
        return 1 if generated else self.federation.num_clients
