"""Scenario files: what to simulate, as a small TOML file checked before anything runs.

A scenario names the data and how it is split among clients, the model, the federation
(clients, rounds, strategy) and local training. The layout (see ``quickstart.toml``)::

    name = "quickstart"
    seed = 42                       # seeds the split, the partition and everything downstream
    [data]
    dataset = "digits"              # digits | mnist5k | shakespeare | synthetic
    partition = "dirichlet"         # iid | dirichlet | natural (natural: synthetic, shakespeare)
    alpha = 0.5                     # dirichlet only, required there (not for shakespeare)
    min_size = 10                   # dirichlet only: fewest examples a client may get
    test_fraction = 0.2             # held out on the server
    [data.synthetic]                # synthetic only: SYNTHETIC(alpha, beta) of FedProx
    num_clients = 20                # generators; default (and required by natural): federation's
    alpha = 1.0
    beta = 1.0
    samples_per_client = 100
    shared_task = false             # true: one labelling task for all (+ N(0, alpha)), learnable
    [data.shakespeare]              # shakespeare only: next-word prediction, a client per role
    num_clients = 20                # roles; default (and required by natural): federation's
    vocab_size = 2000               # <unk>, <eos> and the most frequent words
    seq_len = 20                    # words per example
    [model]
    name = "mlp"                    # mlp | logreg | cnn | lstm (fedcore.models.MODELS)
    hidden = [64]                   # mlp: hidden widths; lstm: one width (hidden = 128)
    # channels = [16, 32]           # cnn: channels of each conv block
    # embed_dim = 64                # lstm: word-embedding width
    [federation]
    num_clients = 20
    clients_per_round = 10          # default: all clients
    rounds = 20
    strategy = "fedavg"             # aggregator.strategies.known_strategies(): fedadam, krum, ...
    compression = "none"            # none | int8 | int4 | topk (client -> server updates)
    secagg = false                  # SecAgg+; a [secagg] table tunes it (secagg_section.py)
    [federation.strategy_options]   # the strategy's hyperparameters, e.g. eta = 0.01 (fedadam),
    max_norm_factor = 10.0          # num_malicious = 2 (krum); every strategy: max_norm_factor
    [federation.compression_options]  # int8/int4: block = 1024; topk: ratio = 0.01
    [train]                         # optional, every key has a default
    local_epochs = 1
    batch_size = 32
    learning_rate = 0.1
    momentum = 0.0
    weight_decay = 0.0

The models are pydantic v2 with ``strict`` types and ``extra="forbid"``, so a typo or a string
where a number belongs is caught at load time. Every user error becomes a `ScenarioError` with
one line naming the file and the dotted key, e.g.
``quickstart.toml: federation.rounds: expected an integer, got 'ten'``.
"""

from __future__ import annotations

import inspect
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aggregator.strategies import known_strategies, strategy_options
from fedcore.compression import CODECS, codec_options
from fedcore.models import MODELS, build_model
from simulations.datasets import DATASET_NAMES, Dataset, dataset_options, load_dataset
from simulations.datasets.shakespeare import DEFAULT_SEQ_LEN, DEFAULT_VOCAB_SIZE
from simulations.partition import DEFAULT_MIN_SIZE, PARTITIONS, partition
from simulations.population import PopulationSection, population_defaults
from simulations.secagg_section import SecAggSection, secagg_misfit, switch_on_with_table

KNOWN_STRATEGIES: tuple[str, ...] = known_strategies()  # the aggregator's registry
KNOWN_CODECS: tuple[str, ...] = tuple(CODECS)
# Datasets that come with their own per-client split (Dataset.groups_train), for "natural".
# Each has a [data.<name>] table whose num_clients defaults to federation.num_clients.
NATURAL_DATASETS: tuple[str, ...] = ("synthetic", "shakespeare")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Momentum = Annotated[float, Field(ge=0.0, lt=1.0)]


class ScenarioError(Exception):
    """A scenario file or dict is unreadable or invalid; the message is one line."""


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _one_of(kind: str, value: str, known: typing.Iterable[str]) -> str:
    if value not in known:
        raise PydanticCustomError(
            "unknown_name", f"unknown {kind} {value!r} (known: {', '.join(known)})"
        )
    return value


def _fail(key: str, message: str) -> PydanticCustomError:
    """An error about ``key`` (dotted) found by a check that spans several fields."""
    return PydanticCustomError("scenario", message, {"key": key})


class SyntheticConfig(_Section):
    """Parameters of FedProx's SYNTHETIC(alpha, beta): ``num_clients`` generators (in a
    scenario it defaults to ``federation.num_clients``), ``samples_per_client`` examples each."""

    num_clients: PositiveInt | None = None
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 1.0
    samples_per_client: PositiveInt = 100
    shared_task: bool = False  # one W, b for all clients (+ N(0, alpha)): a learnable federation


class ShakespeareConfig(_Section):
    """Word-level Shakespeare: the text of the ``num_clients`` roles with the most words (in a
    scenario it defaults to ``federation.num_clients``), in windows of ``seq_len`` words over
    the ``vocab_size`` most frequent words (``<unk>`` and ``<eos>`` included)."""

    num_clients: PositiveInt | None = None
    vocab_size: Annotated[int, Field(ge=3)] = DEFAULT_VOCAB_SIZE
    seq_len: PositiveInt = DEFAULT_SEQ_LEN


class DataConfig(_Section):
    """Which dataset, how its training pool is split among clients, how much is held out."""

    dataset: str
    partition: str
    alpha: PositiveFloat | None = None
    min_size: NonNegativeInt = DEFAULT_MIN_SIZE
    test_fraction: Fraction = 0.2
    synthetic: SyntheticConfig | None = None
    shakespeare: ShakespeareConfig | None = None

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
    def dataset_section(self) -> SyntheticConfig | ShakespeareConfig | None:
        """The dataset's own options table (defaults filled in), or None if it has none."""
        if self.dataset == "synthetic":
            return self.synthetic or SyntheticConfig()
        if self.dataset == "shakespeare":
            return self.shakespeare or ShakespeareConfig()
        return None


class ModelConfig(_Section):
    """The model every client trains: a name in the model registry (``fedcore.models.MODELS``)
    and its hyperparameters. Each key is passed to the builder's keyword of the same name and
    is only allowed for models whose builder takes it; a key left out gets the builder's default
    (filled in, so a stored scenario says what was built). Sizes (input shape, classes,
    vocabulary) come from the dataset, see `simulations.harness.model_spec`.
    """

    name: str
    hidden: list[PositiveInt] | None = None  # mlp: hidden widths; lstm: one width (or an int)
    channels: list[PositiveInt] | None = None  # cnn: output channels of each conv block
    embed_dim: PositiveInt | None = None  # lstm: word-embedding width

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _one_of("model", value, MODELS)

    @field_validator("hidden", mode="before")
    @classmethod
    def _one_width(cls, value: Any, info: ValidationInfo) -> Any:
        """A model with one hidden width (lstm) may say ``hidden = 128`` for ``[128]``."""
        name = info.data.get("name")
        if type(value) is int and name in MODELS and _one_width_key(name, "hidden"):
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
                value = [default] if _one_width_key(self.name, key) else default
                value = list(value) if isinstance(value, tuple | list) else value
                self.__dict__[key] = value
            if isinstance(value, list) and not value:
                noun = _WIDTH_OF.get(key, "value")
                raise _fail(f"model.{key}", f"{self.name} needs at least one {noun}")
            if isinstance(value, list) and len(value) > 1 and _one_width_key(self.name, key):
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
            out[key] = value[0] if _one_width_key(self.name, key) else value
        return out


_HYPERPARAMETERS: tuple[str, ...] = tuple(k for k in ModelConfig.model_fields if k != "name")
_WIDTH_OF = {"hidden": "hidden layer", "channels": "conv block"}


def builder_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of model ``name``'s builder in the registry."""
    return dict(inspect.signature(MODELS[name]).parameters)


def model_keys(name: str) -> tuple[str, ...]:
    """The ``[model]`` keys (besides name) that model ``name`` takes."""
    params = builder_parameters(name)
    return tuple(key for key in _HYPERPARAMETERS if key in params)


def model_misfit(name: str, data: Dataset) -> str | None:
    """Why model ``name`` cannot learn ``data`` (one line), or None if it can.

    A builder that takes ``vocab_size`` is a language model and needs token sequences; any
    other needs a label per example; one that takes ``input_shape`` needs images: rows that
    stand for (H, W) or (H, W, C), or square ones (8x8 digits as 64 features).
    """
    params = builder_parameters(name)
    language_models = [m for m in MODELS if "vocab_size" in builder_parameters(m)]
    if "vocab_size" in params and not data.sequence_targets:
        return (
            f"{name!r} is a language model: it needs token sequences (e.g. dataset "
            f"'shakespeare'), not {data.name!r}"
        )
    if "vocab_size" not in params and data.sequence_targets:
        use = f" (use {' or '.join(language_models)})" if language_models else ""
        return f"{name!r} predicts a label per example, {data.name!r} a word per position{use}"
    if "input_shape" in params and not _image_like(data.input_shape):
        return (
            f"{name!r} needs images (input_shape height, width, channels), {data.name!r} has "
            f"rows of shape {tuple(data.input_shape)}"
        )
    return None


def model_arguments(model: ModelConfig, data: Dataset, seed: int) -> dict[str, Any]:
    """The builder keywords for ``model`` sized for ``data`` (JSON-ready).

    A language model gets ``vocab_size``; any other ``num_classes`` and, those it takes,
    ``input_dim`` (features per row) and ``input_shape`` (the image a row stands for, when
    the data says). Then ``seed`` and the ``[model]`` hyperparameters.
    """
    params = builder_parameters(model.name)
    if "vocab_size" in params:
        sizes: dict[str, Any] = {"vocab_size": data.num_classes}
    else:
        sizes = {"num_classes": data.num_classes, "input_dim": int(np.prod(data.input_shape))}
        if len(data.input_shape) > 1:
            sizes["input_shape"] = [int(n) for n in data.input_shape]
    sizes["seed"] = seed
    kwargs = {key: value for key, value in sizes.items() if key in params}
    return {**kwargs, **model.hyperparameters}


def _image_like(shape: tuple[int, ...]) -> bool:
    if len(shape) in (2, 3):
        return True
    return len(shape) == 1 and int(np.sqrt(shape[0])) ** 2 == shape[0]


def _one_width_key(name: str, key: str) -> bool:
    """True when the builder takes a single int for list key ``key`` (lstm's ``hidden``)."""
    param = builder_parameters(name).get(key)
    if param is None or key not in _WIDTH_OF:
        return False
    if param.default is not inspect.Parameter.empty:
        return type(param.default) is int
    return str(param.annotation) == "int"


class FederationConfig(_Section):
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


class TrainConfig(_Section):
    """Local training on each selected client in each round (minibatch SGD)."""

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 0.1
    momentum: Momentum = 0.0
    weight_decay: NonNegativeFloat = 0.0


class Scenario(_Section):
    """A validated scenario. ``model_dump()`` gives plain JSON-ready data (defaults filled in)
    to store with a run; ``Scenario.model_validate`` of that dump gives the scenario back."""

    name: Annotated[str, Field(min_length=1)]
    seed: NonNegativeInt = 0
    data: DataConfig
    model: ModelConfig
    federation: FederationConfig
    train: TrainConfig = TrainConfig()
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
    def _fits_data(self) -> Self:
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
        if generated:
            clients = 1  # each client makes its own data; the dataset is the server's test set
        natural = self.data.partition == "natural" and not generated
        if natural and section and section.num_clients != clients:
            what = "generator" if name == "synthetic" else "role"
            raise _fail(
                f"data.{name}.num_clients",
                f"the natural partition needs one {what} per client: {section.num_clients} "
                f"!= federation.num_clients ({clients})",
            )
        try:
            data = self.load_data()
        except ValueError as error:  # an option beyond what the data has, e.g. vocab_size
            option, _, rest = str(error).partition(" ")
            if option in dataset_options(name):
                raise _fail(f"data.{name}.{option}", rest) from None
            raise _fail("data.dataset", str(error)) from None
        misfit = model_misfit(self.model.name, data)
        if misfit:
            raise _fail("model.name", misfit)
        self._try_building(data)
        if self.data.partition == "dirichlet" and data.sequence_targets:
            raise _fail(
                "data.partition",
                f"'dirichlet' skews class labels; {name!r} has a target per word "
                "(use iid or natural)",
            )
        n = data.num_train
        if clients > n:
            raise _fail(
                "federation.num_clients",
                f"more clients than examples: {clients} clients, but {self.data.dataset!r} has "
                f"{n} training examples",
            )
        if self.data.partition == "dirichlet" and clients * self.data.min_size > n:
            raise _fail(
                "data.min_size",
                f"{clients} clients x {self.data.min_size} examples is more than the {n} "
                f"training examples of {self.data.dataset!r}",
            )
        misfit = secagg_misfit(self)
        if misfit:
            raise _fail(*misfit)
        return self

    def _try_building(self, data: Dataset) -> None:
        """Build the model once, so a bad hyperparameter fails here, naming its key."""
        name = self.model.name
        try:
            build_model(name, **model_arguments(self.model, data, self.seed))
        except (ValueError, TypeError) as error:
            text = str(error).removeprefix(f"{name}: ")
            key, _, rest = text.partition(" ")
            if key in model_keys(name):
                raise _fail(f"model.{key}", rest) from None
            raise _fail("model", text) from None

    def load_data(self) -> Dataset:
        """The scenario's dataset (cached: cheap to call again)."""
        return load_dataset(
            self.data.dataset, self.data.test_fraction, self.seed, **self.data.options
        )

    def client_indices(self, dataset: Dataset | None = None) -> list[np.ndarray]:
        """One index array into ``dataset.x_train`` per client, per the scenario's partition
        (seeded by ``seed``; passes the dataset's groups, which ``natural`` needs)."""
        dataset = self.load_data() if dataset is None else dataset
        return partition(
            dataset.y_train,
            self.data.partition,
            self.federation.num_clients,
            self.seed,
            alpha=self.data.alpha,
            min_size=self.data.min_size,
            groups=dataset.groups_train,
        )


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario TOML file; any problem raises a one-line `ScenarioError`."""
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
        raise ScenarioError(f"{source}: invalid TOML: {_one_line(str(error))}") from None
    return scenario_from_dict(raw, source=source)


def scenario_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Scenario:
    """Validate a scenario given as nested dicts (what the TOML parser yields)."""
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: expected a table of keys, got {_describe(data)}")
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as error:
        raise ScenarioError(_format(error, source)) from None


# --- error messages ---------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a table",
    "dict_type": "a table",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _format(error: ValidationError, source: str) -> str:
    errors = error.errors(include_url=False)
    # A misspelled key or table explains the "missing" errors it causes: name it first.
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    ctx = first.get("ctx") or {}
    key = ctx.get("key") or _dotted(first["loc"])
    message = _describe_error(first)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{key}: " if key else ""
    return _one_line(f"{source}: {where}{message}{more}")


def _describe_error(error: Mapping[str, Any]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        what = "table" if isinstance(value, Mapping) else "key"
        return f"unknown {what} (allowed: {', '.join(allowed)})" if allowed else f"unknown {what}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = ctx.get(name)
        shown = f"{bound:g}" if isinstance(bound, int | float) else bound
        return f"must be {sign} {shown}, got {_describe(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    return str(error["msg"]).removeprefix("Value error, ")


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Field names of the section at ``loc`` (for 'unknown key' messages)."""
    model: type[BaseModel] | None = Scenario
    for part in loc:
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        model = _section_type(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if found:
                return found
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
