"""``deploy.clientapp:app``: the ClientApp a SuperNode runs on a device.

It is ``client_runtime.app.make_client_app`` (the handlers every simulation runs) with two
mods: one unpacks the small records a deployed server packs (``client_runtime.fleet.packing``)
and packs the reply; the other reads, per message, where this node's data is
(``--node-config``, see ``deploy.node``) and the run's scenario (``context.run_config``). A
node with its own ``.npz`` file and no ``partition-id`` gets a client id from its Flower node
id.

For tests only: ``deploy.node.hold_training`` (``FEDCORE_TEST_HOLD_TRAINING``) holds each
train message, here as in the lean device agent.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_runtime.app import make_client_app
from client_runtime.fleet.packing import packing_mod
from deploy.node import CLIENT_ID_RANGE, NodeData, NodeLoader, hold_training
from fedcore import protocol

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


app: ClientApp = make_client_app(loader, mods=[packing_mod, bind_node])

__all__ = ["NodeLoader", "app", "bind_node", "hold_training", "loader"]
