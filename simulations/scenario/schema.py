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
    BeforeValidator,
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

from aggregator.strategies import known_strategies, strategy_options, strategy_spec
from fedcore.compression import CODECS, codec_options
from fedcore.models import MODELS
from fedcore.models.registry import model_builder
from fedcore.objectives import objective
from fedcore.resolve import ResolveError, is_reference
from fedcore.settings import SettingsError, TrainSettings
from simulations.async_section import Mode, StalenessSection, async_problem
from simulations.datasets import DATA_LOADERS, DATASET_NAMES
from simulations.datasets.shakespeare import DEFAULT_SEQ_LEN, DEFAULT_VOCAB_SIZE
from simulations.partition import DEFAULT_MIN_SIZE, PARTITIONS
from simulations.population import PopulationSection, population_defaults
from simulations.scenario.errors import fail as _fail
from simulations.scenario.errors import one_of as _one_of
from simulations.scenario.model_fit import WIDTH_OF, builder_parameters, one_width_key
from simulations.secagg_section import SecAggSection, secagg_misfit, switch_on_with_table

KNOWN_CODECS: tuple[str, ...] = tuple(CODECS)
# Datasets that come with their own per-client split (Dataset.groups_train), for "natural".
# Each has a [data.<name>] table whose num_clients defaults to federation.num_clients.
NATURAL_DATASETS: tuple[str, ...] = ("synthetic", "shakespeare")
# The user's own data: files (one per client: natural) or a loader (one call per client).
USER_DATASETS: tuple[str, ...] = ("files", "loader")
# [model] keys that come from the data and the run, never from the table
SIZE_KEYS: tuple[str, ...] = ("input_dim", "num_classes", "input_shape", "vocab_size", "seed")

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
    path: Annotated[str, Field(min_length=1)] | None = None  # files: a folder or a glob
    loader: Annotated[str, Field(min_length=1)] | None = None  # (pid, n, seed) -> (x, y)
    alpha: PositiveFloat | None = None
    min_size: NonNegativeInt = DEFAULT_MIN_SIZE
    test_fraction: Fraction = 0.2
    synthetic: SyntheticSection | None = None
    shakespeare: ShakespeareSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _user_data(cls, raw: Any) -> Any:
        """A ``loader`` is dataset "loader" with the natural partition (a client per call);
        ``files`` default to the natural partition (a file per client)."""
        if not isinstance(raw, Mapping):
            return raw
        raw = dict(raw)
        if raw.get("loader") is not None and "dataset" not in raw:
            raw["dataset"] = "loader"
        if raw.get("dataset") in USER_DATASETS and "partition" not in raw:
            raw["partition"] = "natural"
        return raw

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return value if value == "loader" else _one_of("dataset", value, DATASET_NAMES)

    @field_validator("loader")
    @classmethod
    def _known_loader(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                DATA_LOADERS.get(value)
            except ResolveError as exc:
                raise PydanticCustomError("scenario", str(exc)) from None
        return value

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
        if (self.dataset == "files") != (self.path is not None):
            if self.path is None:
                raise _fail("data.path", "missing required key (dataset 'files' reads it)")
            raise _fail("data.path", f"only for dataset 'files', not {self.dataset!r}")
        if (self.dataset == "loader") != (self.loader is not None):
            raise _fail("data.loader", "missing required key (dataset 'loader' calls it)")
        if self.dataset == "loader" and self.partition != "natural":
            raise _fail("data.partition", "a loader gives each client its data: only 'natural'")
        natural = (*NATURAL_DATASETS, *USER_DATASETS)
        if self.partition == "natural" and self.dataset not in natural:
            raise _fail(
                "data.partition",
                f"'natural' needs a dataset with its own per-client split "
                f"({', '.join(NATURAL_DATASETS)}, files or a loader), not {self.dataset!r}",
            )
        for name in NATURAL_DATASETS:
            if getattr(self, name) is not None and self.dataset != name:
                raise _fail(f"data.{name}", f"only for dataset {name!r}, not {self.dataset!r}")
        return self

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options for `load_dataset` beyond test_fraction and seed (a loader's
        ``num_clients`` is the federation's, added by ``simulations.prepare``)."""
        if self.dataset == "files":
            return {"path": self.path}
        if self.dataset == "loader":
            return {"loader": self.loader}
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
    weights as int8 codes with per-output-channel scales; ``freeze_a = true`` trains and
    sends B only (FFA-LoRA: half the values, and averaging them is exact)."""

    rank: Annotated[int, Field(ge=1, le=256)] = 8
    alpha: PositiveFloat = 16.0
    targets: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        "attn", "mlp"]
    base: Literal["float32", "int8"] = "float32"
    freeze_a: bool = False

    @field_validator("alpha", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if type(value) is int else value


class ModelSection(_Section):
    """The model every client trains: ``name`` (or ``factory``) names its builder: a
    registered model (``fedcore.models.MODELS``: the built-ins and ``fedcore.models`` entry
    points) or ``package.module:build``. Every other key is passed to the builder's keyword
    of the same name and is only allowed when the builder takes it; a declared key left out
    gets the builder's default (filled in, so a stored scenario says what was built). Sizes
    (input shape, classes, vocabulary) and the seed come from the data and the run, see
    `simulations.prepare.build_scenario_model`.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    name: str | None = None
    factory: str | None = None  # the same as name: "package.module:build" reads well here
    hidden: list[PositiveInt] | None = None  # mlp: hidden widths; lstm: one width (or an int)
    channels: list[PositiveInt] | None = None  # cnn: output channels of each conv block
    embed_dim: PositiveInt | None = None  # lstm: word-embedding width
    lora: LoraSection | None = None  # fine-tune adapters only (any model with Dense layers)

    @field_validator("name", "factory")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not is_reference(value) and value not in MODELS:
            return _one_of("model", value, MODELS)
        try:
            model_builder(value)
        except ResolveError as exc:
            raise PydanticCustomError("scenario", str(exc)) from None
        return value

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_width(cls, value: Any, info: ValidationInfo) -> Any:
        """A model with one hidden width (lstm) may say ``hidden = 128`` for ``[128]``."""
        name = info.data.get("factory") or info.data.get("name")
        if type(value) is int and name and one_width_key(name, "hidden"):
            if value <= 0:
                raise PydanticCustomError("scenario", f"must be > 0, got {value}")
            return [value]
        return value

    @property
    def builder(self) -> str:
        """What names the builder: ``factory`` or ``name``."""
        return self.factory or self.name or ""

    @model_validator(mode="after")
    def _fits_model(self) -> Self:
        if (self.name is None) == (self.factory is None):
            if self.name is None:
                raise _fail("model.name", "missing required key (or model.factory)")
            raise _fail("model.factory", "give model.name or model.factory, not both")
        name = self.builder
        params = builder_parameters(name)
        keys = model_keys(name)
        for key, value in (self.model_extra or {}).items():
            if key not in keys:
                takes = f"its keys: {', '.join(keys)}" if keys else "it has none"
                reason = "set from the data and the run" if key in SIZE_KEYS else "not used"
                raise _fail(f"model.{key}", f"{reason} by model {name!r} ({takes})")
            if not _plain_value(value):
                raise _fail(f"model.{key}", "expected a number, string, boolean or list")
        for key in _HYPERPARAMETERS:
            value = getattr(self, key)
            if key not in keys:
                if value is not None:
                    takes = f"its keys: {', '.join(keys)}" if keys else "it has none"
                    raise _fail(f"model.{key}", f"not used by model {name!r} ({takes})")
                continue
            default = params[key].default
            if value is None and default is inspect.Parameter.empty:
                raise _fail(f"model.{key}", f"missing required key (model {name!r} needs it)")
            if value is None:
                value = [default] if one_width_key(name, key) else default
                value = list(value) if isinstance(value, tuple | list) else value
                self.__dict__[key] = value
            if isinstance(value, list) and not value:
                noun = WIDTH_OF.get(key, "value")
                raise _fail(f"model.{key}", f"{name} needs at least one {noun}")
            if isinstance(value, list) and len(value) > 1 and one_width_key(name, key):
                raise _fail(f"model.{key}", f"{name} takes one width (e.g. {key} = {value[0]})")
        for key in keys:
            missing = key not in _HYPERPARAMETERS and key not in (self.model_extra or {})
            if missing and params[key].default is inspect.Parameter.empty:
                raise _fail(f"model.{key}", f"missing required key (model {name!r} needs it)")
        return self

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The builder keywords this table sets (one-width keys as an int)."""
        name = self.builder
        out: dict[str, Any] = {}
        for key in model_keys(name):
            if key in _HYPERPARAMETERS:
                value = getattr(self, key)
                out[key] = value[0] if one_width_key(name, key) else value
            elif key in (self.model_extra or {}):
                out[key] = self.model_extra[key]
        return out


_HYPERPARAMETERS: tuple[str, ...] = ("hidden", "channels", "embed_dim")


def _plain_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    return isinstance(value, bool | int | float | str)


def model_keys(name: str) -> tuple[str, ...]:
    """The ``[model]`` keys (besides name) that model ``name`` takes: its builder's keyword
    parameters other than the sizes and the seed (the declared ones first)."""
    params = builder_parameters(name)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    declared = [key for key in _HYPERPARAMETERS if key in params]
    others = [key for key, p in params.items()
              if p.kind in kinds and key not in SIZE_KEYS and key not in declared]
    return tuple(declared + others)


class FederationSection(_Section):
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
        try:
            strategy_spec(value)
        except ResolveError as exc:
            raise PydanticCustomError("scenario", str(exc)) from None
        return value

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


class EvaluationSection(_Section):
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


class Scenario(_Section):
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
