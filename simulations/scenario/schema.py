"""The scenario file's schema: one pydantic model per table, checks of the file alone.

Validating a scenario reads no data and builds no model (``simulations.prepare`` does that,
once); what can be checked from the file is checked here: types and ranges (``strict``,
``extra="forbid"``), known names, and relations between keys. The ``[train]`` table is
``fedcore.settings.TrainSettings``, the type the server sends and the device trains with.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aggregator.strategies import known_strategies, strategy_options
from fedcore.compression import CODECS, codec_options
from fedcore.models import MODELS
from fedcore.settings import TrainSettings
from simulations.async_section import Mode, StalenessSection, async_problem
from simulations.datasets import DATASET_NAMES
from simulations.datasets.shakespeare import DEFAULT_SEQ_LEN, DEFAULT_VOCAB_SIZE
from simulations.partition import DEFAULT_MIN_SIZE, PARTITIONS
from simulations.population import PopulationSection, population_defaults
from simulations.scenario.errors import fail as _fail
from simulations.scenario.errors import one_of as _one_of
from simulations.scenario.model_fit import WIDTH_OF, builder_parameters, one_width_key
from simulations.secagg_section import SecAggSection, secagg_misfit, switch_on_with_table

KNOWN_STRATEGIES: tuple[str, ...] = known_strategies()  # the aggregator's registry
KNOWN_CODECS: tuple[str, ...] = tuple(CODECS)
# Datasets that come with their own per-client split (Dataset.groups_train), for "natural".
# Each has a [data.<name>] table whose num_clients defaults to federation.num_clients.
NATURAL_DATASETS: tuple[str, ...] = ("synthetic", "shakespeare")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SyntheticSection(_Section):
    """Parameters of FedProx's SYNTHETIC(alpha, beta): ``num_clients`` generators (in a
    scenario it defaults to ``federation.num_clients``), ``samples_per_client`` examples each."""

    num_clients: PositiveInt | None = None
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 1.0
    samples_per_client: PositiveInt = 100
    shared_task: bool = False  # one W, b for all clients (+ N(0, alpha)): a learnable federation


class ShakespeareSection(_Section):
    """Word-level Shakespeare: the text of the ``num_clients`` roles with the most words (in a
    scenario it defaults to ``federation.num_clients``), in windows of ``seq_len`` words over
    the ``vocab_size`` most frequent words (``<unk>`` and ``<eos>`` included)."""

    num_clients: PositiveInt | None = None
    vocab_size: Annotated[int, Field(ge=3)] = DEFAULT_VOCAB_SIZE
    seq_len: PositiveInt = DEFAULT_SEQ_LEN


class DataSection(_Section):
    """Which dataset, how its training pool is split among clients, how much is held out."""

    dataset: str
    partition: str
    alpha: PositiveFloat | None = None
    min_size: NonNegativeInt = DEFAULT_MIN_SIZE
    test_fraction: Fraction = 0.2
    synthetic: SyntheticSection | None = None
    shakespeare: ShakespeareSection | None = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _one_of("dataset", value, DATASET_NAMES)

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, value: str) -> str:
        return _one_of("partition", value, PARTITIONS)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        dirichlet = self.partition == "dirichlet"
        if dirichlet and self.alpha is None:
            raise _fail("data.alpha", "missing required key (the dirichlet partition needs it)")
        if not dirichlet and self.alpha is not None:
            raise _fail(
                "data.alpha", f"only used by the dirichlet partition, not {self.partition!r}"
            )
        if not dirichlet and self.min_size != DEFAULT_MIN_SIZE:  # the default: as if not given
            raise _fail(
                "data.min_size", f"only used by the dirichlet partition, not {self.partition!r}"
            )
        if self.partition == "natural" and self.dataset not in NATURAL_DATASETS:
            raise _fail(
                "data.partition",
                f"'natural' needs a dataset with its own per-client split "
                f"({', '.join(NATURAL_DATASETS)}), not {self.dataset!r}",
            )
        for name in NATURAL_DATASETS:
            if getattr(self, name) is not None and self.dataset != name:
                raise _fail(f"data.{name}", f"only for dataset {name!r}, not {self.dataset!r}")
        return self

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options for `load_dataset` beyond test_fraction and seed."""
        section = self.dataset_section
        if section is None:
            return {}
        return {key: value for key, value in section.model_dump().items() if value is not None}

    @property
    def dataset_section(self) -> SyntheticSection | ShakespeareSection | None:
        """The dataset's own options table (defaults filled in), or None if it has none."""
        if self.dataset == "synthetic":
            return self.synthetic or SyntheticSection()
        if self.dataset == "shakespeare":
            return self.shakespeare or ShakespeareSection()
        return None


class LoraSection(_Section):
    """``[model] lora = { rank = 8, alpha = 16, targets = ["attn", "mlp"], base = "int8" }``:
    adapters on the Dense layers the targets name, everything else frozen, so a round trains
    and sends the adapters only (`fedcore.nn.lora`); ``base = "int8"`` holds the frozen
    weights as int8 codes with per-output-channel scales."""

    rank: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: PositiveFloat = 16.0
    targets: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        "attn", "mlp"]
    base: Literal["float32", "int8"] = "float32"

    @field_validator("alpha", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if type(value) is int else value


class ModelSection(_Section):
    """The model every client trains: a name in the model registry (``fedcore.models.MODELS``)
    and its hyperparameters. Each key is passed to the builder's keyword of the same name and
    is only allowed for models whose builder takes it; a key left out gets the builder's default
    (filled in, so a stored scenario says what was built). Sizes (input shape, classes,
    vocabulary) come from the dataset, see `simulations.prepare.build_scenario_model`.
    """

    name: str
    hidden: list[PositiveInt] | None = None  # mlp: hidden widths; lstm: one width (or an int)
    channels: list[PositiveInt] | None = None  # cnn: output channels of each conv block
    embed_dim: PositiveInt | None = None  # lstm: word-embedding width
    lora: LoraSection | None = None  # fine-tune adapters only (any model with Dense layers)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _one_of("model", value, MODELS)

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_width(cls, value: Any, info: ValidationInfo) -> Any:
        """A model with one hidden width (lstm) may say ``hidden = 128`` for ``[128]``."""
        name = info.data.get("name")
        if type(value) is int and name in MODELS and one_width_key(name, "hidden"):
            if value <= 0:
                raise PydanticCustomError("scenario", f"must be > 0, got {value}")
            return [value]
        return value

    @model_validator(mode="after")
    def _fits_model(self) -> Self:
        params = builder_parameters(self.name)
        keys = model_keys(self.name)
        for key in _HYPERPARAMETERS:
            value = getattr(self, key)
            if key not in keys:
                if value is not None:
                    takes = f"its keys: {', '.join(keys)}" if keys else "it has none"
                    raise _fail(f"model.{key}", f"not used by model {self.name!r} ({takes})")
                continue
            default = params[key].default
            if value is None and default is inspect.Parameter.empty:
                raise _fail(f"model.{key}", f"missing required key (model {self.name!r} needs it)")
            if value is None:
                value = [default] if one_width_key(self.name, key) else default
                value = list(value) if isinstance(value, tuple | list) else value
                self.__dict__[key] = value
            if isinstance(value, list) and not value:
                noun = WIDTH_OF.get(key, "value")
                raise _fail(f"model.{key}", f"{self.name} needs at least one {noun}")
            if isinstance(value, list) and len(value) > 1 and one_width_key(self.name, key):
                raise _fail(
                    f"model.{key}", f"{self.name} takes one width (e.g. {key} = {value[0]})"
                )
        return self

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The builder keywords this config sets (one-width keys as an int)."""
        out: dict[str, Any] = {}
        for key in model_keys(self.name):
            value = getattr(self, key)
            out[key] = value[0] if one_width_key(self.name, key) else value
        return out


_HYPERPARAMETERS: tuple[str, ...] = tuple(
    k for k in ModelSection.model_fields if k not in ("name", "lora"))


def model_keys(name: str) -> tuple[str, ...]:
    """The ``[model]`` keys (besides name) that model ``name`` takes."""
    params = builder_parameters(name)
    return tuple(key for key in _HYPERPARAMETERS if key in params)


class FederationSection(_Section):
    """How many clients exist, how many train each round, for how many rounds, and how the
    server combines their updates."""

    num_clients: PositiveInt
    clients_per_round: PositiveInt | None = Field(default=None, validate_default=True)
    rounds: PositiveInt
    strategy: str = "fedavg"
    strategy_options: dict[str, int | float] = Field(default_factory=dict)
    compression: str = "none"
    compression_options: dict[str, int | float] = Field(default_factory=dict)
    secagg: bool = False  # secure aggregation (SecAgg+); see also the [secagg] table
    # the most examples one client's reply may count (a cap on any one client's weight; it
    # may never claim more than it declared either); None: aggregator.updates' default
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
        return _one_of("strategy", value, KNOWN_STRATEGIES)

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


class Scenario(_Section):
    """A validated scenario. ``model_dump()`` gives plain JSON-ready data (defaults filled in)
    to store with a run; ``Scenario.model_validate`` of that dump gives the scenario back."""

    name: Annotated[str, Field(min_length=1)]
    seed: NonNegativeInt = 0
    data: DataSection
    model: ModelSection
    federation: FederationSection
    train: TrainSettings = TrainSettings()
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
            if getattr(self.train, key) != TrainSettings.model_fields[key].default:
                raise _fail(
                    f"train.{key}",
                    "set by the strategy, not here (e.g. federation.strategy = 'fedprox' with "
                    f"federation.strategy_options.{key})",
                )
        misfit = secagg_misfit(self)
        if misfit:
            raise _fail(*misfit)
        return self

    @property
    def clients_with_data(self) -> int:
        """Clients the training pool is split among (1 when each generates its own data)."""
        generated = self.population is not None and self.population.generate
        return 1 if generated else self.federation.num_clients
