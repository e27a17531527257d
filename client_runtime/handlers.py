"""The client's message handlers, one implementation for every runtime.

``make_handlers(load_partition)`` maps each message type (``query``, ``train``, ``evaluate``
and the four SecAgg+ stages) to a handler ``(content, context) -> reply content``. The content
is a ``RecordDict``, Flower's (``client_runtime.app`` wraps the handlers in a Flower
``ClientApp`` for the simulations and the stock SuperNode) or ``fedcore.records``' (the lean
device agent, ``client_runtime.fleet``); a handler answers with records of the same kind.
``context`` needs ``node_id``, ``node_config``, ``run_config`` and ``state`` (a RecordDict
kept for the run), as Flower's ``Context`` has. A handler raises on anything it cannot
answer; its runtime turns that into an error reply. A device's handlers (no imports by name)
read a model file a message names only from the models folder its operator configured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from client_runtime.compression import compress_update
from client_runtime.cost import model_family
from client_runtime.datacheck import check_data
from client_runtime.device import device_budget, train_on_device
from client_runtime.evaluation import evaluate_content, train_part
from client_runtime.model_budget import ModelCache
from client_runtime.secagg_app import (
    CredentialsFn,
    TrainOutput,
    node_credentials,
    secagg_handlers,
)
from fedcore import protocol
from fedcore.nn import Module, get_state, set_state
from fedcore.objectives import objective
from fedcore.records import kit_of
from fedcore.resolve import device_files
from fedcore.wire import read_vector, vector_record

LoadPartition = Callable[[int], tuple[np.ndarray, np.ndarray]]
Handler = Callable[[Any, Any], Any]  # (content, context) -> reply content

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


def partition_id(context: Any) -> int:
    """This node's data shard, from its node config (set by the simulation or ``--node-config``)."""
    if protocol.PARTITION_ID not in context.node_config:
        raise ValueError(f"node config has no {protocol.PARTITION_ID!r}")
    return int(context.node_config[protocol.PARTITION_ID])


def make_handlers(
    load_partition: LoadPartition,
    *,
    allow_import: bool = False,
    credentials: CredentialsFn = node_credentials,
) -> dict[str, Handler]:
    """The handlers of a node that trains on ``load_partition(partition_id)``, by message type.
    ``allow_import``: build models named ``package.module:name`` (a simulation, whose scenario
    is the user's own input); a deployed device leaves it off. ``credentials(context)``: a
    node's identity for SecAgg+ (default: the one its node config names; a simulation's CA
    hands out its own)."""

    def query(content: Any, context: Any) -> Any:
        kit = kit_of(content)
        pid = partition_id(context)
        _, y = load_partition(pid)
        info = kit.ConfigRecord({"partition_id": pid, "num_examples": len(y)})
        return kit.RecordDict({protocol.CLIENT_INFO: info})

    def local_training(content: Any, context: Any):
        kit = kit_of(content)
        pid = partition_id(context)
        x, y = load_partition(pid)
        config_record = protocol.record(content, protocol.CONFIG, kit.ConfigRecord)
        global_record = protocol.record(content, protocol.GLOBAL, kit.ArrayRecord)
        if config_record is None or global_record is None:
            raise ValueError(f"train message needs {protocol.CONFIG!r} and {protocol.GLOBAL!r}")
        own = protocol.record(content, protocol.CLIENT_CONFIG, kit.ConfigRecord) or {}
        instructions = protocol.TrainInstructions.from_config({**config_record, **own})
        check_data(instructions.model, x, y)  # before building or training anything
        global_vector = read_vector(global_record)
        if global_vector.dtype != np.float32 or global_vector.ndim != 1:
            raise ValueError(f"global vector is {global_vector.dtype}{list(global_vector.shape)}")
        budget = device_budget(context.node_config)
        model = _model_for(instructions.model, allow_import, global_vector.size, budget)
        set_state(model, global_vector)  # parameters, then BatchNorm statistics
        settings = instructions.settings
        x, y = train_part(x, y, settings.local_test, pid)  # never the local test split
        loss_fn = objective(settings.loss, y, allow_import=allow_import)
        result = train_on_device(model, x, y, settings, instructions.seed, context.node_config,
                                 loss_fn)
        return model, result, instructions, global_vector

    def train(content: Any, context: Any) -> Any:
        kit = kit_of(content)
        model, result, instructions, global_vector = local_training(content, context)
        metrics = kit.MetricRecord(
            {
                "num_examples": result.num_examples,
                "train_loss": result.train_loss,
                "seconds": result.seconds,
                **result.costs,
            }
        )
        reply = kit.RecordDict({protocol.METRICS: metrics})
        if protocol.DEVICE in context.node_config:
            device = str(context.node_config[protocol.DEVICE])
            reply[protocol.CLIENT_INFO] = kit.ConfigRecord(
                {"device_class": device, "model_family": model_family(model)}
            )
        if instructions.compression == "none":
            reply[protocol.UPDATE] = vector_record(get_state(model), kit)
        else:
            reply[protocol.UPDATE], reply[protocol.CODEC] = compress_update(
                get_state(model),
                global_vector,
                instructions.compression,
                instructions.compression_options,
                context.state,
                seed=instructions.seed,
            )
        return reply

    def secagg_training(content: Any, context: Any) -> TrainOutput:
        model, result, _, _ = local_training(content, context)
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
        flat = get_state(model)
        return TrainOutput(flat, result.num_examples, result.train_loss, result.seconds, simulated)

    def evaluate(content: Any, context: Any) -> Any:
        pid = partition_id(context)
        budget = device_budget(context.node_config)
        return evaluate_content(
            content, pid, load_partition(pid),
            lambda spec, size: _model_for(spec, allow_import, size, budget), allow_import,
        )

    handlers = {"query": query, "train": train, "evaluate": evaluate,
                **secagg_handlers(secagg_training, credentials)}
    if allow_import:  # a simulation: the scenario is the operator's, files are theirs
        return handlers
    return {kind: _operator_files_only(handler) for kind, handler in handlers.items()}


def _operator_files_only(handler: Handler) -> Handler:
    """A device's handler: a model file a message names (``onnx:NAME``) is read only from
    the models folder the device's operator configured (``protocol.MODELS_DIR``), if any."""

    def handle(content: Any, context: Any) -> Any:
        folder = context.node_config.get(protocol.MODELS_DIR)
        with device_files(Path(folder) if isinstance(folder, str) and folder else None):
            return handler(content, context)

    return handle


def handler_for(handlers: dict[str, Handler], message_type: str) -> Handler | None:
    """The handler of ``message_type`` as Flower routes it (``train`` and ``train.default``
    are the same), or None."""
    category, _, action = message_type.partition(".")
    return handlers.get(category if action in ("", "default") else message_type)


__all__ = ["Handler", "LoadPartition", "handler_for", "make_handlers", "partition_id"]
