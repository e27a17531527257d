"""The Flower ``ClientApp`` every Flower backend runs: answer queries, train on the local shard.

``make_client_app(load_partition)`` wraps the handlers of ``client_runtime.handlers`` (the
same ones the lean device agent runs) in a Flower ``ClientApp``, so the in-process simulation,
Flower's simulation runtime and a stock SuperNode answer every message with one
implementation; only where the data comes from differs.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client_runtime.handlers import Handler, LoadPartition, make_handlers, partition_id
from client_runtime.secagg_app import CredentialsFn, node_credentials


def _flower(handler: Handler) -> Callable[[Message, Context], Message]:
    def handle(msg: Message, context: Context) -> Message:
        return Message(handler(msg.content, context), reply_to=msg)

    return handle


def make_client_app(
    load_partition: LoadPartition,
    mods: list[Mod] | None = None,
    *,
    allow_import: bool = False,
    credentials: CredentialsFn = node_credentials,
) -> ClientApp:
    """Build the ClientApp whose nodes train on ``load_partition(partition_id)``; ``mods``
    (Flower ClientApp mods) wrap every handler. ``allow_import``: build models named
    ``package.module:name`` (a simulation, whose scenario is the user's own input); a
    deployed device leaves it off. ``credentials(context)``: a node's identity for SecAgg+
    (default: the one its node config names; a simulation's CA hands out its own)."""
    app = ClientApp(mods=mods)
    handlers = make_handlers(load_partition, allow_import=allow_import, credentials=credentials)
    for message_type, handler in handlers.items():
        category, _, action = message_type.partition(".")
        register = getattr(app, category)
        (register(action) if action else register())(_flower(handler))
    return app


__all__ = ["LoadPartition", "make_client_app", "partition_id"]
