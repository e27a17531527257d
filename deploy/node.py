"""Where a device's training data is: its ``--node-config`` keys, checked and loaded.

A node holds either a shard of a vendored data set (``dataset="digits" partition-id=3
num-partitions=10``; split like the run's scenario splits it, so the server's test set is
never trained on) or its own arrays (``data="/path/file.npz"`` with ``x`` and ``y``).
``device="rpi-4-2gb"`` names its device class (the engine's memory budget). This module
stays light: it imports the vendored data sets only for a ``dataset`` node.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedcore import protocol

if TYPE_CHECKING:
    import numpy as np

DATASET = "dataset"  # a vendored data set's name
DATA = "data"  # path of an .npz file with arrays x and y
NUM_PARTITIONS = "num-partitions"  # how many shards the data set is cut into
SCENARIO = "scenario"  # run config: the scenario (TOML text) both sides read


CLIENT_ID_RANGE = 2**31  # a node id folded into a client id (partition-id) when none is given
HOLD_TRAINING = "FEDCORE_TEST_HOLD_TRAINING"  # tests: train only once this file exists
HOLD_FROM = "FEDCORE_TEST_HOLD_FROM"  # tests: ... from this process's N-th train message on
HOLD_LIMIT_S = 600.0


class NodeConfigError(ValueError):
    """A node config that names no usable data (the message says which key is wrong)."""


@dataclass(frozen=True)
class NodeData:
    """What a node's config says about its data (checked, not loaded)."""

    dataset: str | None = None
    partition_id: int | None = None
    num_partitions: int | None = None
    data: Path | None = None
    device: str | None = None

    @classmethod
    def parse(cls, node_config: Mapping[str, Any]) -> NodeData:
        """Read and check the keys; ``NodeConfigError`` names the first bad one."""
        dataset = node_config.get(DATASET)
        data = node_config.get(DATA)
        if (dataset is None) == (data is None):
            raise NodeConfigError(f"node config needs exactly one of {DATASET!r} or {DATA!r}")
        pid = _int(node_config, protocol.PARTITION_ID)
        parts = _int(node_config, NUM_PARTITIONS)
        if dataset is not None and pid is None:
            raise NodeConfigError(f"node config: {DATASET!r} needs {protocol.PARTITION_ID!r}")
        if pid is not None and pid < 0:
            raise NodeConfigError(f"node config: {protocol.PARTITION_ID} must be >= 0, got {pid}")
        if parts is not None and parts < 1:
            raise NodeConfigError(f"node config: {NUM_PARTITIONS} must be >= 1, got {parts}")
        if pid is not None and parts is not None and pid >= parts:
            raise NodeConfigError(
                f"node config: {protocol.PARTITION_ID} {pid} is out of range "
                f"0..{parts - 1} ({NUM_PARTITIONS}={parts})"
            )
        device = node_config.get(protocol.DEVICE)
        return cls(
            dataset=None if dataset is None else str(dataset),
            partition_id=pid,
            num_partitions=parts,
            data=None if data is None else Path(str(data)).expanduser(),
            device=None if device is None else str(device),
        )

    def check(self) -> None:
        """Check names and files without loading a data set (what ``fedcore client`` does)."""
        if self.device is not None:
            from device_profiles import get_profile
            from device_profiles.profile import ProfileError

            try:
                get_profile(self.device)
            except ProfileError as exc:
                raise NodeConfigError(f"node config: {protocol.DEVICE}: {exc}") from None
        if self.dataset is not None:
            from simulations.datasets import DATASETS

            if not server_parts():  # the shard is cut as the scenario cuts it: simulations'
                raise NodeConfigError(
                    f"node config: {DATASET}: a vendored data set's shard is cut by the "
                    "scenario code of fedcore's server parts, which this device install lacks "
                    "(pip install 'fedcore[server]'); give this device's own data as "
                    f"{DATA}=FILE.npz instead"
                )
            if self.dataset not in DATASETS:
                known = ", ".join(sorted(DATASETS))
                raise NodeConfigError(
                    f"node config: {DATASET}: unknown data set {self.dataset!r}; known: {known}"
                )
        if self.data is not None:
            load_npz(self.data)

    def load(self, run_config: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """This node's training examples ``(x, y)``; ``run_config`` carries the scenario."""
        if self.data is not None:
            return load_npz(self.data)
        return dataset_shard(self, scenario_table(run_config))


def server_parts() -> bool:
    """Whether fedcore's ``server`` extra is installed (Flower: what cutting a vendored data
    set's shard imports, through the scenario code); found without importing it."""
    import importlib.util

    return importlib.util.find_spec("flwr") is not None


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise NodeConfigError(f"node config: {key} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise NodeConfigError(f"node config: {key} must be an integer, got {value!r}") from None


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float32, one row per example) and ``y`` (int64 labels, or float32 regression
    targets) from an ``.npz`` file, read by `fedcore.datafiles.read_xy` (never unpickled)."""
    from fedcore.datafiles import DataFileError, read_xy

    if not path.is_file():
        raise NodeConfigError(f"node config: {DATA}: no such file: {path}")
    try:
        return read_xy(path)
    except DataFileError as exc:
        raise NodeConfigError(str(exc)) from None


MAX_SCENARIO_BYTES = 1 << 20  # a scenario is a few hundred bytes of TOML


def scenario_text(value: Any) -> str | None:
    """A run config's scenario: its TOML text (None: empty). Never a path: the run config
    comes from the server, and a device does not read a file because a message names one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NodeConfigError(f"run config: {SCENARIO} must be TOML (or JSON) text")
    if len(value) > MAX_SCENARIO_BYTES:
        raise NodeConfigError(f"run config: {SCENARIO} exceeds {MAX_SCENARIO_BYTES} bytes")
    if not value.strip():
        return None
    if "\n" not in value and "=" not in value and not value.lstrip().startswith("{"):
        raise NodeConfigError(
            f"run config: {SCENARIO} must be the scenario's TOML text, not a path "
            f"({value[:80]!r})"
        )
    return value


def scenario_table(run_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's scenario as parsed TOML (None if the run config carries none)."""
    text = scenario_text(run_config.get(SCENARIO))
    if text is None:
        return None
    if text.lstrip().startswith("{"):  # a validated scenario as JSON (`fedcore server --set`)
        try:
            table = json.loads(text)
        except ValueError as exc:
            raise NodeConfigError(f"run config: {SCENARIO}: invalid JSON: {exc}") from None
        if not isinstance(table, dict):
            raise NodeConfigError(f"run config: {SCENARIO}: expected a table")
        return table
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(f"run config: {SCENARIO}: invalid TOML: {exc}") from None


def dataset_shard(node: NodeData, scenario: Mapping[str, Any] | None) -> tuple[np.ndarray, ...]:
    """Shard ``partition_id`` of the vendored data set, cut as the run's scenario cuts it.

    The train/test split (``data.test_fraction``, ``seed``) and the partition scheme come from
    the scenario, so no node trains on the server's test examples; ``num-partitions`` defaults
    to ``federation.num_clients``.
    """
    from fedcore.resolve import no_imports  # here: importlib.metadata, for a dataset node only
    from simulations.prepare import client_partitions, load_data
    from simulations.scenario import ScenarioError, scenario_from_dict

    if scenario is None:
        raise NodeConfigError(f"run config has no {SCENARIO!r}: cannot split {node.dataset!r}")
    try:
        with no_imports():  # a message's scenario never makes a device import code
            spec = scenario_from_dict(scenario, source="run config scenario")
    except ScenarioError as exc:
        raise NodeConfigError(str(exc)) from None
    if spec.data.dataset != node.dataset:
        raise NodeConfigError(
            f"node config: this node holds {node.dataset!r} but the run trains on "
            f"{spec.data.dataset!r}"
        )
    parts = node.num_partitions or spec.federation.num_clients
    assert node.partition_id is not None  # parse() requires it with a dataset
    if node.partition_id >= parts:
        raise NodeConfigError(
            f"node config: {protocol.PARTITION_ID} {node.partition_id} is out of range "
            f"0..{parts - 1} (the run has {parts} partitions)"
        )
    try:
        data = load_data(spec, source="run config scenario")
        shards = client_partitions(spec, data, parts, source="run config scenario")
    except ScenarioError as exc:
        raise NodeConfigError(str(exc)) from None
    index = shards[node.partition_id]
    return data.x_train[index], data.y_train[index]


class NodeLoader:
    """``partition_id -> (x, y)`` for the node the current message is for (the last data
    loaded stays warm: a long-lived device agent loads it once per scenario)."""

    def __init__(self) -> None:
        self.node: NodeData | None = None
        self.run_config: Mapping[str, Any] = {}
        self._cache: dict[tuple[NodeData, str], tuple[np.ndarray, np.ndarray]] = {}

    def bind(self, node: NodeData, run_config: Mapping[str, Any]) -> None:
        """Serve ``node``'s data for the run whose config is ``run_config``."""
        self.node, self.run_config = node, run_config

    def __call__(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        if self.node is None:
            raise RuntimeError("no node bound: the node mod did not run")
        key = (self.node, str(self.run_config.get(SCENARIO, "")))
        if key not in self._cache:
            self._cache.clear()  # one data set at a time: free the last before loading
            self._cache[key] = self.node.load(self.run_config)
        return self._cache[key]


_trained = [0]  # train messages this process has started (``hold_training``)


def hold_training(poll: float = 0.1) -> None:
    """Tests only: with ``FEDCORE_TEST_HOLD_TRAINING=FILE`` in a device's environment, the
    device starts each train message only once ``FILE`` exists (at most ``HOLD_LIMIT_S``): a
    slow device whose slowness the test ends when it chooses
    (``tests/deploy/test_async_processes.py``), or one the test kills mid-round: while it
    waits, ``FILE.held`` exists; with ``FEDCORE_TEST_HOLD_FROM=N`` (a long-lived agent) the
    first N-1 train messages pass (``tests/deploy/test_faults.py``). Only the device's own
    environment sets these; no message can."""
    gate = os.environ.get(HOLD_TRAINING)
    _trained[0] += 1
    if not gate or Path(gate).exists() or _trained[0] < int(os.environ.get(HOLD_FROM, "1")):
        return
    held = Path(gate + ".held")
    held.touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(poll)
    held.unlink(missing_ok=True)
