"""Prepare a validated scenario once: its data, its partitions, its model, the round config.

Validating a scenario (``simulations.scenario``) reads no data; this step does, once per run,
and checks what only the data can tell (does the model fit it, are there enough examples, can
the split give every client its minimum). `client_partitions` is the one split of a scenario's
training pool: the simulation's clients, and a deployed node's shard, are cut by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.decode import DEFAULT_MAX_EXAMPLES
from aggregator.evaluation import EvaluationConfig
from aggregator.rounds import FederationConfig
from fedcore import protocol
from fedcore.datafiles import DataFileError
from fedcore.models import build_model
from fedcore.nn import Module, get_state
from fedcore.objectives import objective
from fedcore.resolve import ResolveError
from simulations.async_section import async_config
from simulations.datasets import Dataset, dataset_options, load_dataset
from simulations.partition import partition
from simulations.scenario import Scenario, ScenarioError, model_keys
from simulations.scenario.errors import scenario_error
from simulations.scenario.model_fit import model_arguments, model_misfit
from simulations.secagg_section import secagg_config
from simulations.world import GeneratedLoader, World


class PartitionLoader:
    """``partition_id -> (x, y)`` for simulated clients; picklable, so Ray actors can use it.

    It carries only the dataset's name and the index arrays; each process loads the dataset
    once (cached) and slices its shards lazily.
    """

    def __init__(self, dataset_args: dict[str, Any], parts: list[np.ndarray]) -> None:
        self.dataset_args = dataset_args
        self.parts = parts
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_args": self.dataset_args, "parts": self.parts, "_cache": {}}

    def __call__(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        if partition_id not in self._cache:
            if not 0 <= partition_id < len(self.parts):
                raise ValueError(f"partition {partition_id} out of range 0..{len(self.parts) - 1}")
            data = load_dataset(**self.dataset_args)
            idx = self.parts[partition_id]
            self._cache[partition_id] = (data.x_train[idx], data.y_train[idx])
        return self._cache[partition_id]


def dataset_args(scenario: Scenario) -> dict[str, Any]:
    """Keyword arguments of ``load_dataset`` for this scenario (a loader is called once per
    client of the federation)."""
    args = {
        "name": scenario.data.dataset,
        "test_fraction": scenario.data.test_fraction,
        "seed": scenario.seed,
        **scenario.data.options,
    }
    if scenario.data.dataset == "loader":
        args["num_clients"] = scenario.federation.num_clients
    return args


def load_data(scenario: Scenario, source: str | None = None) -> Dataset:
    """The scenario's dataset (cached); ``ScenarioError`` naming the option it cannot meet."""
    source = source or scenario.name
    name = scenario.data.dataset
    try:
        return load_dataset(**dataset_args(scenario))
    except DataFileError as error:  # the user's files or loader: the message names them
        key = "data.loader" if name == "loader" else "data.path"
        raise scenario_error(source, key, str(error)) from None
    except ValueError as error:  # an option beyond what the data has, e.g. vocab_size
        option, _, rest = str(error).partition(" ")
        if option in dataset_options(name):
            raise scenario_error(source, f"data.{name}.{option}", rest) from None
        raise scenario_error(source, "data.dataset", str(error)) from None


def client_partitions(
    scenario: Scenario,
    data: Dataset,
    num_partitions: int | None = None,
    source: str | None = None,
) -> list[np.ndarray]:
    """One sorted index array into ``data.x_train`` per client (``num_partitions``, default
    the federation's clients), per the scenario's partition and seed; ``ScenarioError`` when
    the data cannot be split so."""
    source = source or scenario.name
    clients = num_partitions or scenario.clients_with_data
    n, section = data.num_train, scenario.data
    if section.partition == "natural" and data.groups_train is None:
        raise scenario_error(
            source, "data.partition",
            f"{section.path!r} is one file: cut it with 'iid' or 'dirichlet' (or give a file "
            "per client)",
        )
    if section.partition == "natural" and section.dataset == "files":
        files = int(data.groups_train.max()) + 1
        if files != clients:
            raise scenario_error(
                source, "federation.num_clients",
                f"{section.path!r} has {files} client files, not {clients}",
            )
    if clients > n:
        raise scenario_error(
            source,
            "federation.num_clients",
            f"more clients than examples: {clients} clients, but {section.dataset!r} has "
            f"{n} training examples",
        )
    if section.partition == "dirichlet" and clients * section.min_size > n:
        raise scenario_error(
            source,
            "data.min_size",
            f"{clients} clients x {section.min_size} examples is more than the {n} "
            f"training examples of {section.dataset!r}",
        )
    try:
        return partition(
            data.y_train,
            section.partition,
            clients,
            seed=scenario.seed,
            alpha=section.alpha,
            min_size=section.min_size,
            groups=data.groups_train,
        )
    except ValueError as exc:  # e.g. no Dirichlet draw gives every client min_size examples
        raise scenario_error(source, "data.partition", str(exc)) from None


def build_scenario_model(
    scenario: Scenario, data: Dataset, source: str | None = None
) -> tuple[protocol.ModelSpec, Module]:
    """The model a scenario asks for, sized for its dataset, and built; ``ScenarioError``
    naming ``model.name`` (or ``model.factory``) if it cannot learn this data (e.g. an LSTM
    on digits), ``train.loss`` if the loss does not fit the targets, or the ``[model]`` key
    the builder refuses."""
    source = source or scenario.name
    name = scenario.model.builder
    where = "model.factory" if scenario.model.factory else "model.name"
    misfit = model_misfit(name, data)
    if misfit:
        raise scenario_error(source, where, misfit)
    if scenario.data.partition == "dirichlet" and (data.sequence_targets or data.regression):
        what = "a target per word" if data.sequence_targets else "float targets"
        raise scenario_error(
            source, "data.partition",
            f"'dirichlet' skews class labels; {data.name!r} has {what} (use iid or natural)",
        )
    loss = objective(scenario.train.loss, data.y_train)
    if loss.metric == "accuracy" and data.regression:
        raise scenario_error(
            source, "train.loss",
            f"{scenario.train.loss!r} needs integer labels; {data.name!r} has float targets "
            "(use loss = 'mse')",
        )
    if scenario.train.loss == "mse" and not data.regression:
        raise scenario_error(
            source, "train.loss",
            f"'mse' needs float targets; {data.name!r} has integer labels (use cross_entropy)",
        )
    kwargs = model_arguments(name, scenario.model.hyperparameters, data, scenario.seed)
    if scenario.model.lora is not None:  # build_model puts the adapters on (fedcore.nn.lora)
        kwargs["lora"] = scenario.model.lora.model_dump()
    spec = protocol.ModelSpec(name, kwargs)
    try:
        return spec, build_model(spec.name, **spec.kwargs)
    except ResolveError as error:  # not a Module, or a keyword the builder lacks
        raise scenario_error(source, where, str(error)) from None
    except (ValueError, TypeError) as error:
        text = str(error).removeprefix(f"{name}: ")
        key, _, rest = text.partition(" ")
        if key in model_keys(name):
            raise scenario_error(source, f"model.{key}", rest) from None
        if key.startswith("lora.") and key.endswith(":"):  # e.g. a target naming nothing
            raise scenario_error(source, f"model.{key[:-1]}", rest) from None
        raise scenario_error(source, "model", text) from None
    except Exception as error:  # the user's builder failed: one line, naming it
        text = " ".join(str(error).split())
        raise scenario_error(source, where, f"{name!r} raised {type(error).__name__}: {text}"
                             ) from None


def evaluation_config(
    scenario: Scenario, spec: protocol.ModelSpec, data: Dataset
) -> EvaluationConfig | None:
    """The round loop's federated evaluation for the scenario's ``[evaluation]`` table."""
    section = scenario.evaluation
    if section is None:
        return None
    return EvaluationConfig(
        every=section.every,
        fraction=section.fraction,
        local_test=section.local_test,
        model=spec,
        loss=scenario.train.loss,
        metric=objective(scenario.train.loss, data.y_train).metric,
        server=section.server,
    )


def _check_local_test(scenario: Scenario, loader: Any, source: str) -> None:
    """Every client must keep examples on both sides of its local test split."""
    assert scenario.evaluation is not None
    share = scenario.evaluation.local_test
    for pid in range(scenario.federation.num_clients):
        n = len(loader(pid)[1])
        if n < 2:
            raise scenario_error(
                source, "evaluation.local_test",
                f"client {pid} has {n} example(s): too few to hold out {share:g} of them",
            )


@dataclass
class PreparedScenario:
    """Everything a run needs, built (and checked) before anything is stored or started."""

    scenario: Scenario
    data: Dataset = field(repr=False)
    loader: Any = field(repr=False)  # PartitionLoader, or a GeneratedLoader
    spec: protocol.ModelSpec
    config: FederationConfig
    initial: np.ndarray = field(repr=False)  # the model's initial parameters (read-only)
    world: World | None = None  # the simulated population and its clock, if any


def prepare_scenario(scenario: Scenario, source: str | None = None) -> PreparedScenario:
    """Load the data, partition it and build the model; ``ScenarioError`` if that cannot work."""
    data = load_data(scenario, source)
    spec, model = build_scenario_model(scenario, data, source)
    fed = scenario.federation
    world = World.of(scenario) if scenario.population is not None else None
    if world is not None and scenario.population.generate:
        loader: Any = GeneratedLoader.of(scenario, data)
        largest = loader.samples
    else:
        parts = client_partitions(scenario, data, source=source)
        loader = PartitionLoader(dataset_args(scenario), parts)
        largest = max(len(part) for part in parts)
    if scenario.evaluation is not None and scenario.population is None:
        _check_local_test(scenario, loader, source or scenario.name)
    config = FederationConfig(
        num_rounds=fed.rounds,
        clients_per_round=fed.clients_per_round,
        seed=scenario.seed,
        min_nodes=fed.num_clients,
        evaluation=evaluation_config(scenario, spec, data),
        train=protocol.TrainInstructions(
            round=0,
            model=spec,
            settings=scenario.train_settings,
            seed=scenario.seed,
            compression=fed.compression,
            compression_options=dict(fed.compression_options),
        ),
        secagg=secagg_config(scenario, largest),
        asynchrony=async_config(fed),
        max_examples=fed.max_examples or DEFAULT_MAX_EXAMPLES,
    )
    if world is not None:
        config = world.federation_config(config)
    initial = get_state(model)  # the parameters, then BatchNorm statistics (FedAvg'd too)
    initial.flags.writeable = False
    return PreparedScenario(scenario, data, loader, spec, config, initial, world)


__all__ = [
    "PartitionLoader",
    "PreparedScenario",
    "ScenarioError",
    "build_scenario_model",
    "client_partitions",
    "dataset_args",
    "load_data",
    "prepare_scenario",
]
