"""The SecAgg+ stage handlers (the protocol is ``client_runtime.secagg``).

``secagg_handlers`` gives one handler per stage, ``(content, context) -> reply content``, for
Flower's records or ``fedcore.records`` (the lean device agent) alike; ``register_secagg``
adds them to a Flower ``ClientApp``. The client's state lives in ``context.state`` between
messages, as Flower keeps a node's context for the run on every backend (and the lean agent
keeps one per run). A node with an identity (``credentials(context)``: its enrolled key and
certificate and the CA, from its node config or a simulation's authority) takes part only
with the consistency check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from client_runtime.secagg import ClientState, SecAggClient
from fedcore.records import kit_of
from fedcore.secagg.identity import Credentials
from fedcore.secagg.messages import (
    TYPES,
    CheckRequest,
    KeysRequest,
    MaskRequest,
    ShareRequest,
    UnmaskRequest,
)

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

STATE_RECORD = "secagg_state"
CredentialsFn = Callable[[Any], Credentials | None]


class TrainOutput(NamedTuple):
    """What local training hands to the masking step."""

    params: np.ndarray  # the new local parameters (float32, flat)
    num_examples: int
    loss: float
    seconds: float
    # a simulated device's costs and class (``protocol.SIMULATED``), for the simulated clock
    simulated: dict[str, Any] | None = None


TrainFn = Callable[[Any, Any], TrainOutput]  # (message content, node context) -> TrainOutput
Handler = Callable[[Any, Any], Any]  # (message content, node context) -> reply content
_STAGES: dict[str, tuple[type, Callable[[SecAggClient, Any], Any]]] = {
    "advertise": (KeysRequest, lambda c, r: c.advertise(r)),
    "share": (ShareRequest, lambda c, r: c.share_keys(r)),
    "check": (CheckRequest, lambda c, r: c.check(r)),
    "unmask": (UnmaskRequest, lambda c, r: c.unmask(r)),
}


_NODE_CREDENTIALS: dict[tuple, Credentials] = {}


def node_credentials(context: Any) -> Credentials | None:
    """The identity a node's config names (``protocol.IDENTITY_*``: paths the device's
    operator gave, never a message), loaded once per file version; None if it names none."""
    from pathlib import Path

    from fedcore import protocol
    from fedcore.secagg.identity import Authority, Identity

    keys = (protocol.IDENTITY_KEY, protocol.IDENTITY_CERT, protocol.IDENTITY_CA)
    named = [context.node_config.get(k) for k in keys]
    if not any(named):
        return None
    if not all(isinstance(v, str) and v for v in named):
        raise ValueError(f"node config: give all of {', '.join(keys)} or none")
    paths = [Path(str(v)) for v in named]
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in paths)
    if stamp not in _NODE_CREDENTIALS:
        identity = Identity.load(paths[0], paths[1])
        authority = Authority.from_pem(paths[2].read_bytes()[:65536])
        authority.verify(identity.cert)  # this device's own certificate must pass, too
        _NODE_CREDENTIALS.clear()
        _NODE_CREDENTIALS[stamp] = Credentials(identity, authority)
    return _NODE_CREDENTIALS[stamp]


def _load(context: Any, credentials: Credentials | None) -> SecAggClient:
    record = context.state.get(STATE_RECORD)  # (``.config_records`` copies every record)
    state = ClientState.from_bytes(record["state"]) if record is not None else None
    return SecAggClient(context.node_id, state, credentials)


def _save(context: Any, client: SecAggClient) -> None:
    kit = kit_of(context.state)
    context.state[STATE_RECORD] = kit.ConfigRecord({"state": client.state.to_bytes()})


def _stage_handler(stage: str, train: TrainFn, credentials: CredentialsFn | None) -> Handler:
    """The handler of one stage: the client's state from ``context.state``, the request
    parsed from the content, the reply as content of the same kind (Flower's or lean)."""
    from fedcore import protocol
    from fedcore.secagg import messages as m
    from fedcore.wire import read_vector

    def handler(content: Any, context: Any) -> Any:
        kit = kit_of(content)
        client = _load(context, credentials(context) if credentials else None)
        extra: dict[str, Any] = {}
        if stage != "masked":
            kind, run = _STAGES[stage]
            reply = run(client, m.from_content(kind, content))
        else:
            client.open_shares(m.from_content(MaskRequest, content))
            out = train(content, context)
            base = read_vector(content[protocol.GLOBAL])
            update = np.asarray(out.params, dtype=np.float32) - base
            reply = client.mask(update, out.num_examples, out.loss)
            metrics = {"seconds": out.seconds}
            if out.simulated:  # a simulated device: what the simulated clock needs, never more
                metrics.update(out.simulated["costs"])
                extra[protocol.CLIENT_INFO] = kit.ConfigRecord(out.simulated["info"])
            extra[protocol.METRICS] = kit.MetricRecord(metrics)
        _save(context, client)
        return m.to_content(reply, kit, **extra)

    return handler


def secagg_handlers(train: TrainFn, credentials: CredentialsFn | None = node_credentials
                    ) -> dict[str, Handler]:
    """The SecAgg+ stage handlers by message type; ``train(content, context)`` runs local
    training on the masked-input message (global vector + instructions); ``credentials``
    gives a node's identity (default: from its node config; None: the node has none)."""
    return {TYPES[stage]: _stage_handler(stage, train, credentials) for stage in TYPES}


def register_secagg(
    app: ClientApp, train: Callable[[Message, Context], TrainOutput],
    credentials: CredentialsFn | None = node_credentials,
) -> None:
    """Add the SecAgg+ stage handlers to a Flower ``ClientApp``; ``train(msg, context)`` runs
    local training on the masked-input message; ``credentials`` as for ``secagg_handlers``."""
    from flwr.app import Message

    def flower_handler(stage: str) -> Callable[[Message, Context], Message]:
        def handle(msg: Message, context: Context) -> Message:
            handler = _stage_handler(stage, lambda _content, ctx: train(msg, ctx), credentials)
            return Message(handler(msg.content, context), reply_to=msg)

        return handle

    for stage, message_type in TYPES.items():
        category, _, action = message_type.partition(".")
        getattr(app, category)(action)(flower_handler(stage))


__all__ = ["STATE_RECORD", "TrainOutput", "node_credentials", "register_secagg",
           "secagg_handlers"]
