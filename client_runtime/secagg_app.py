"""The SecAgg+ stage handlers of a ``ClientApp`` (the protocol is ``client_runtime.secagg``).

``register_secagg`` adds one handler per stage; the client's state lives in ``context.state``
between messages, as Flower keeps a node's context for the run on every backend. A node with
an identity (``credentials(context)``: its enrolled key and certificate and the CA, from its
node config or a simulation's authority) takes part only with the consistency check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from client_runtime.secagg import ClientState, SecAggClient
from fedcore.secagg.identity import Credentials
from fedcore.secagg.messages import (
    CheckRequest,
    KeysRequest,
    MaskReply,
    MaskRequest,
    ShareRequest,
    UnmaskRequest,
)

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

STATE_RECORD = "secagg_state"
CredentialsFn = Callable[["Context"], Credentials | None]


class TrainOutput(NamedTuple):
    """What local training hands to the masking step."""

    params: np.ndarray  # the new local parameters (float32, flat)
    num_examples: int
    loss: float
    seconds: float
    # a simulated device's costs and class (``protocol.SIMULATED``), for the simulated clock
    simulated: dict[str, Any] | None = None


TrainFn = Callable[["Message", "Context"], TrainOutput]


_NODE_CREDENTIALS: dict[tuple, Credentials] = {}


def node_credentials(context: Context) -> Credentials | None:
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


def _load(context: Context, credentials: Credentials | None) -> SecAggClient:
    record = context.state.get(STATE_RECORD)  # (``.config_records`` copies every record)
    state = ClientState.from_bytes(record["state"]) if record is not None else None
    return SecAggClient(context.node_id, state, credentials)


def _save(context: Context, client: SecAggClient) -> None:
    from flwr.app import ConfigRecord

    context.state[STATE_RECORD] = ConfigRecord({"state": client.state.to_bytes()})


def register_secagg(
    app: ClientApp, train: TrainFn, credentials: CredentialsFn | None = node_credentials
) -> None:
    """Add the SecAgg+ stage handlers to ``app``; ``train(msg, context)`` runs local
    training on the masked-input message (global vector + instructions); ``credentials``
    gives a node's identity (default: from its node config; None: the node has none)."""
    from flwr.app import ConfigRecord, Message, MetricRecord

    from fedcore import protocol
    from fedcore.secagg import messages as m
    from fedcore.wire import read_vector

    def stage(kind: type, run: Callable[[SecAggClient, Any, Message, Context], Any]) -> Callable:
        def handler(msg: Message, context: Context) -> Message:
            client = _load(context, credentials(context) if credentials else None)
            request = m.from_content(kind, msg.content)
            reply, extra = run(client, request, msg, context)
            _save(context, client)
            return Message(m.to_content(reply, **extra), reply_to=msg)

        return handler

    def masked(
        client: SecAggClient, request: MaskRequest, msg: Message, context: Context
    ) -> tuple[MaskReply, dict[str, Any]]:
        client.open_shares(request)
        out = train(msg, context)
        base = read_vector(msg.content[protocol.GLOBAL])
        update = np.asarray(out.params, dtype=np.float32) - base
        reply = client.mask(update, out.num_examples, out.loss)
        metrics = {"seconds": out.seconds}
        extra: dict[str, Any] = {}
        if out.simulated:  # a simulated device: what the simulated clock needs, never more
            metrics.update(out.simulated["costs"])
            extra[protocol.CLIENT_INFO] = ConfigRecord(out.simulated["info"])
        extra[protocol.METRICS] = MetricRecord(metrics)
        return reply, extra

    app.query("secagg_advertise")(stage(KeysRequest, lambda c, r, *_: (c.advertise(r), {})))
    app.query("secagg_share")(stage(ShareRequest, lambda c, r, *_: (c.share_keys(r), {})))
    app.train("secagg_masked")(stage(MaskRequest, masked))
    app.query("secagg_check")(stage(CheckRequest, lambda c, r, *_: (c.check(r), {})))
    app.query("secagg_unmask")(stage(UnmaskRequest, lambda c, r, *_: (c.unmask(r), {})))


__all__ = ["STATE_RECORD", "TrainOutput", "node_credentials", "register_secagg"]
