"""``deploy.clientapp:app``: the ClientApp a SuperNode runs on a device.

It is ``client_runtime.app.make_client_app`` (the handlers every simulation runs) with a mod
that reads, per message, where this node's data is (``--node-config``, see ``deploy.node``)
and the run's scenario (``context.run_config``). A node with its own ``.npz`` file and no
``partition-id`` gets a client id from its Flower node id.

For tests only: with ``FEDCORE_TEST_HOLD_TRAINING=FILE`` in a device's environment (which
Flower's processes inherit from ``fedcore client``), the device starts each train message only
once ``FILE`` exists (at most ``HOLD_LIMIT_S``): a slow device whose slowness the test ends
when it chooses (``tests/deploy/test_async_processes.py``). Only the device's own environment
sets it; no message can.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_runtime.app import make_client_app
from deploy.node import SCENARIO, NodeData
from fedcore import protocol

CLIENT_ID_RANGE = 2**31  # a node id folded into a client id (partition-id) when none is given
HOLD_TRAINING = "FEDCORE_TEST_HOLD_TRAINING"  # tests: train only once this file exists
HOLD_LIMIT_S = 600.0


class NodeLoader:
    """``partition_id -> (x, y)`` for the node the current message is for."""

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
            self._cache[key] = self.node.load(self.run_config)
        return self._cache[key]


loader = NodeLoader()


def bind_node(msg: Message, context: Context, call_next: Any) -> Message:
    """ClientApp mod: check this node's config and bind its data before any handler."""
    node = NodeData.parse(context.node_config)
    if node.partition_id is None:
        context.node_config[protocol.PARTITION_ID] = int(context.node_id) % CLIENT_ID_RANGE
    loader.bind(node, context.run_config)
    if msg.metadata.message_type.startswith("train"):
        hold_training()
    return call_next(msg, context)


def hold_training(poll: float = 0.1) -> None:
    """Tests: wait until the file ``FEDCORE_TEST_HOLD_TRAINING`` names exists (see above)."""
    gate = os.environ.get(HOLD_TRAINING)
    if not gate:
        return
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(poll)


app: ClientApp = make_client_app(loader, mods=[bind_node])

__all__ = ["NodeLoader", "app", "bind_node", "hold_training", "loader"]
