"""The Flower ``ClientApp`` every backend runs: answer queries, train on the local shard.

``make_client_app(load_partition)`` takes the function that yields this node's training data,
so the same handlers serve the in-process simulation, Flower's simulation runtime and a real
SuperNode; only where the data comes from differs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client_runtime.compression import compress_update
from client_runtime.cost import model_family
from client_runtime.datacheck import check_data
from client_runtime.device import device_budget, train_on_device
from client_runtime.evaluation import evaluate_message, train_part
from client_runtime.model_budget import ModelCache
from client_runtime.secagg_app import (
    CredentialsFn,
    TrainOutput,
    node_credentials,
    register_secagg,
)
from fedcore import protocol
from fedcore.nn import Module
from fedcore.objectives import objective
from fedcore.wire import read_vector, vector_record

LoadPartition = Callable[[int], tuple[np.ndarray, np.ndarray]]

# Models built in this process, by spec: later rounds only overwrite their parameters. Without
# ``allow_import`` only models registered or installed here (entry points) are built: a device
# never imports code because a message names it; and never one that does not fit its budget.
_models = ModelCache()


def _model_for(
    spec: protocol.ModelSpec, allow_import: bool, size: int, budget: int | None
) -> Module:
    """The cached model of ``spec`` (a module-level function: the handlers reach the cache
    through it, so pickling a ClientApp for Ray ships no cached model by value)."""
    return _models.get(spec, allow_import, size, budget)


def partition_id(context: Context) -> int:
    """This node's data shard, from its node config (set by the simulation or ``--node-config``)."""
    if protocol.PARTITION_ID not in context.node_config:
        raise ValueError(f"node config has no {protocol.PARTITION_ID!r}")
    return int(context.node_config[protocol.PARTITION_ID])


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

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = partition_id(context)
        _, y = load_partition(pid)
        info = ConfigRecord({"partition_id": pid, "num_examples": len(y)})
        return Message(RecordDict({protocol.CLIENT_INFO: info}), reply_to=msg)

    def local_training(msg: Message, context: Context):
        pid = partition_id(context)
        x, y = load_partition(pid)
        config_record = protocol.record(msg.content, protocol.CONFIG, ConfigRecord)
        global_record = protocol.record(msg.content, protocol.GLOBAL, ArrayRecord)
        if config_record is None or global_record is None:
            raise ValueError(f"train message needs {protocol.CONFIG!r} and {protocol.GLOBAL!r}")
        own = protocol.record(msg.content, protocol.CLIENT_CONFIG, ConfigRecord) or {}
        instructions = protocol.TrainInstructions.from_config({**config_record, **own})
        check_data(instructions.model, x, y)  # before building or training anything
        global_vector = read_vector(global_record)
        if global_vector.dtype != np.float32 or global_vector.ndim != 1:
            raise ValueError(f"global vector is {global_vector.dtype}{list(global_vector.shape)}")
        budget = device_budget(context.node_config)
        model = _model_for(instructions.model, allow_import, global_vector.size, budget)
        model.set_flat(global_vector)
        settings = instructions.settings
        x, y = train_part(x, y, settings.local_test, pid)  # never the local test split
        loss_fn = objective(settings.loss, y, allow_import=allow_import)
        result = train_on_device(model, x, y, settings, instructions.seed, context.node_config,
                                 loss_fn)
        return model, result, instructions, global_vector

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model, result, instructions, global_vector = local_training(msg, context)
        metrics = MetricRecord(
            {
                "num_examples": result.num_examples,
                "train_loss": result.train_loss,
                "seconds": result.seconds,
                **result.costs,
            }
        )
        content = RecordDict({protocol.METRICS: metrics})
        if protocol.DEVICE in context.node_config:
            device = str(context.node_config[protocol.DEVICE])
            content[protocol.CLIENT_INFO] = ConfigRecord(
                {"device_class": device, "model_family": model_family(model)}
            )
        if instructions.compression == "none":
            content[protocol.UPDATE] = vector_record(model.get_flat())
        else:
            content[protocol.UPDATE], content[protocol.CODEC] = compress_update(
                model.get_flat(),
                global_vector,
                instructions.compression,
                instructions.compression_options,
                context.state,
                seed=instructions.seed,
            )
        return Message(content, reply_to=msg)

    def secagg_training(msg: Message, context: Context) -> TrainOutput:
        model, result, _, _ = local_training(msg, context)
        simulated = None
        node = context.node_config
        if node.get(protocol.SIMULATED) and protocol.DEVICE in node:
            simulated = {
                "costs": dict(result.costs),
                "info": {
                    "device_class": str(node[protocol.DEVICE]),
                    "model_family": model_family(model),
                },
            }
        flat = model.get_flat()
        return TrainOutput(flat, result.num_examples, result.train_loss, result.seconds, simulated)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = partition_id(context)
        budget = device_budget(context.node_config)
        return evaluate_message(
            msg, pid, load_partition(pid),
            lambda spec, size: _model_for(spec, allow_import, size, budget), allow_import,
        )

    register_secagg(app, secagg_training, credentials)  # the SecAgg+ stage handlers
    return app


__all__ = ["LoadPartition", "make_client_app", "partition_id"]
