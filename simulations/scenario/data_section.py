"""The ``[data]`` table: which dataset, how it is split among clients, how much is held out,
and the options tables of the datasets that have them (``[data.synthetic]``,
``[data.shakespeare]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from simulations.datasets import DATA_LOADERS, DATASET_NAMES
from simulations.datasets.shakespeare import DEFAULT_SEQ_LEN, DEFAULT_VOCAB_SIZE
from simulations.partition import DEFAULT_MIN_SIZE, PARTITIONS
from simulations.scenario.errors import fail as _fail
from simulations.scenario.errors import one_of as _one_of
from simulations.scenario.errors import resolved as _resolved
from simulations.scenario.section import Section

# Datasets that come with their own per-client split (Dataset.groups_train), for "natural".
# Each has a [data.<name>] table whose num_clients defaults to federation.num_clients.
NATURAL_DATASETS: tuple[str, ...] = ("synthetic", "shakespeare")
# The user's own data: files (one per client: natural) or a loader (one call per client).
USER_DATASETS: tuple[str, ...] = ("files", "loader")

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class SyntheticSection(Section):
    """Parameters of FedProx's SYNTHETIC(alpha, beta): ``num_clients`` generators (in a
    scenario it defaults to ``federation.num_clients``), ``samples_per_client`` examples each."""

    num_clients: PositiveInt | None = None
    alpha: NonNegativeFloat = 1.0
    beta: NonNegativeFloat = 1.0
    samples_per_client: PositiveInt = 100
    shared_task: bool = False  # one W, b for all clients (+ N(0, alpha)): a learnable federation


class ShakespeareSection(Section):
    """Word-level Shakespeare: the text of the ``num_clients`` roles with the most words (in a
    scenario it defaults to ``federation.num_clients``), in windows of ``seq_len`` words over
    the ``vocab_size`` most frequent words (``<unk>`` and ``<eos>`` included)."""

    num_clients: PositiveInt | None = None
    vocab_size: Annotated[int, Field(ge=3)] = DEFAULT_VOCAB_SIZE
    seq_len: PositiveInt = DEFAULT_SEQ_LEN


class DataSection(Section):
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
        return value if value is None else _resolved(value, DATA_LOADERS.get)

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
