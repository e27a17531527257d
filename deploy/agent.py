"""``fedcore-device``: join a federation with the lean device agent (no Flower, no Typer).

The same options as ``fedcore client`` (which runs this by default): where this device's
data is (``--dataset``/``--partition-id``/``--num-partitions`` or ``--data``, ``--device``),
the SuperLink (``--superlink``, ``--root-certificates``) and the device's key (``--key``).
Everything is checked before joining; a mistake is one line and exit 2. Then the agent
(``client_runtime.fleet.agent``) serves until Ctrl-C or SIGTERM (exit 130), until the SuperLink
has been gone ``--max-wait`` s (exit 0), or until the SuperLink refuses this device (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USAGE, FAILED, INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """A user mistake (one line)."""


@dataclass
class JoinOptions:
    """What ``fedcore-device`` and ``fedcore client`` pass to ``join``."""

    superlink: str
    node_config: dict[str, Any]
    root_certificates: Path | None = None
    key: Path | None = None
    max_wait: float = 120.0
    state_dir: Path | None = None  # where the node id outlives the process (with a key)


def node_values(dataset: str | None, partition_id: int | None, num_partitions: int | None,
                data: Path | None, device: str | None) -> dict[str, Any]:
    """The node config of these options (the keys ``deploy.node`` reads), checked."""
    from deploy.apart import check_apart
    from deploy.node import DATA, DATASET, NUM_PARTITIONS, NodeConfigError, NodeData
    from fedcore import protocol

    values: dict[str, Any] = {}
    for key, value in ((DATASET, dataset), (protocol.PARTITION_ID, partition_id),
                       (NUM_PARTITIONS, num_partitions),
                       (DATA, None if data is None else str(data.expanduser().resolve())),
                       (protocol.DEVICE, device)):
        if value is not None:
            values[key] = value
    try:  # the data file is read in a child: the device waits for a run without it
        check_apart(NodeData.parse(values).check, (NodeConfigError,))
    except NodeConfigError as exc:
        raise UsageError(as_options(str(exc))) from None
    return values


def local_values(identity: Path | None, key: Path | None, root_certificates: Path | None,
                 models: Path | None) -> dict[str, str]:
    """The node config of ``--identity`` (checked against ``--key`` and the CA of
    ``--root-certificates``: the ClientApp then takes part in SecAgg+ only with the checks
    against a malicious server) and ``--models`` (the folder a run's ``onnx:NAME`` models are
    read from); ``UsageError`` names what is wrong."""
    from fedcore import protocol

    values: dict[str, str] = {}
    if identity is not None:
        from fedcore.secagg.identity import Authority, Identity, InvalidIdentity

        if key is None or root_certificates is None:
            raise UsageError("--identity: needs --key (the enrolled key) and "
                             "--root-certificates (the CA)")
        if not identity.is_file():
            raise UsageError(f"--identity: no such file: {identity}")
        try:
            own = Identity.load(key, identity)
            Authority.from_pem(root_certificates.read_bytes()[:65536]).verify(own.cert)
        except (OSError, ValueError, InvalidIdentity) as exc:
            raise UsageError(f"--identity: {identity}: {exc}") from None
        values[protocol.IDENTITY_KEY] = str(key.expanduser().resolve())
        values[protocol.IDENTITY_CERT] = str(identity.expanduser().resolve())
        values[protocol.IDENTITY_CA] = str(root_certificates.expanduser().resolve())
    if models is not None:
        if not models.is_dir():
            raise UsageError(f"--models: no such folder: {models}")
        values[protocol.MODELS_DIR] = str(models.expanduser().resolve())
    return values


def check_key(key: Path, root_certificates: Path | None) -> None:
    """``--key`` must be an unencrypted ECDSA private key (as keygen writes) and come with TLS."""
    from client_runtime.fleet.transport import load_private_key

    if root_certificates is None:
        raise UsageError(
            "--key: device authentication needs TLS: give --root-certificates ca.pem too")
    if not key.is_file():
        raise UsageError(f"--key: no such file: {key}")
    try:
        load_private_key(key)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--key: {key}: not an unencrypted ECDSA private key "
                         f"(`fedcore clients keygen` makes one): {exc}") from None


def check_connection(options: JoinOptions) -> None:
    """The address, CA file, key and TLS handshake, before joining (``UsageError``)."""
    from deploy.probe import check_tls
    from deploy.processes import reachable, split_address

    try:
        host, port = split_address(options.superlink)
    except ValueError as exc:
        raise UsageError(f"--superlink: {exc}") from None
    ca = options.root_certificates
    if ca is not None and not ca.is_file():
        raise UsageError(f"--root-certificates: no such file: {ca}")
    if options.key is not None:
        check_key(options.key, ca)
    why = reachable(host, port)
    if why is not None:
        raise UsageError(f"--superlink: cannot reach a SuperLink at {options.superlink}: {why}")
    why = check_tls(host, port, ca)
    if why is not None:
        raise UsageError(why)


def join(options: JoinOptions, say: Any = None) -> int:
    """Run the agent until it stops; the exit code (0 gone, 1 refused, 130 interrupted)."""
    from client_runtime.fleet.agent import Agent, AgentStopped, Settings
    from client_runtime.fleet.transport import FleetClient, NodeSigner, load_private_key
    from deploy.node import CLIENT_ID_RANGE, NodeData, NodeLoader, hold_training
    from fedcore import protocol

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if options.key is not None:
        signer, register = NodeSigner(load_private_key(options.key)), False
    else:  # a plain server without node authentication: a throw-away key, registered
        from cryptography.hazmat.primitives.asymmetric import ec

        signer, register = NodeSigner(ec.generate_private_key(ec.SECP384R1())), True
    client = FleetClient(options.superlink, root_certificates=options.root_certificates,
                         signer=signer)
    node = NodeData.parse(options.node_config)
    loader = NodeLoader()

    def bind(context: Any, message_type: str) -> None:
        if node.partition_id is None:
            context.node_config[protocol.PARTITION_ID] = context.node_id % CLIENT_ID_RANGE
        loader.bind(node, context.run_config)
        if message_type.startswith("train"):
            hold_training()

    def handlers() -> Any:  # loaded with the first message: an idle device stays small
        from client_runtime.handlers import make_handlers

        return make_handlers(loader)

    node_file = None
    if options.state_dir is not None and not register:  # a throw-away key has no node to keep
        from client_runtime.fleet.nodefile import NodeFile

        node_file = NodeFile(options.state_dir, options.superlink, signer.public)
    agent = Agent(client, handlers, options.node_config, bind=bind,
                  settings=Settings(max_wait=options.max_wait), register=register,
                  node_file=node_file)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        agent.run(on_joined=lambda node_id: say(
            f"device joined {options.superlink} as node {node_id} ({describe(node)}); "
            "Ctrl-C to leave"))
    except KeyboardInterrupt:
        say("left the federation")
        return INTERRUPTED
    except AgentStopped as exc:
        say(f"error: {exc}" if exc.refused else str(exc))
        return FAILED if exc.refused else 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        agent.leave()
        if client.warning:
            say(f"the SuperLink warned: {client.warning}")
    return 0


def describe(node: Any) -> str:
    """One phrase for the node's data and device class."""
    if node.data is not None:
        what = f"data {node.data}"
    else:
        parts = f" of {node.num_partitions}" if node.num_partitions else ""
        what = f"{node.dataset} partition {node.partition_id}{parts}"
    return what + (f", device {node.device}" if node.device else "")


def as_options(message: str) -> str:
    """Name the command's options, not the node-config keys, in an error message."""
    for key in ("partition-id", "num-partitions", "dataset", "data", "device"):
        message = message.replace(f"node config: {key}", f"--{key}")
        message = message.replace(f"'{key}'", f"--{key}")
    return message.replace("node config: ", "").replace("node config ", "")


def parser() -> argparse.ArgumentParser:
    """The command line of ``fedcore-device``."""
    p = argparse.ArgumentParser(
        prog="fedcore-device",
        description="Join a federation from this device with the lean agent.")
    p.add_argument("--superlink", help="HOST:PORT of the SuperLink (`fedcore server`).")
    p.add_argument("--check", type=Path, metavar="SCENARIO",
                   help="Check offline that this device's data fits SCENARIO's model and exit.")
    p.add_argument("--dataset", help="A vendored data set this device holds a shard of.")
    p.add_argument("--partition-id", type=int, help="Which shard (with --dataset); with "
                   "--data: client id.")
    p.add_argument("--num-partitions", type=int, help="Into how many shards the data set is "
                   "cut (default: federation.num_clients).")
    p.add_argument("--data", type=Path, help="This device's own examples: an .npz with x, y.")
    p.add_argument("--device-class", "--device", dest="device",
                   help="Device class (its memory budget).")
    p.add_argument("--root-certificates", type=Path, help="TLS: the SuperLink's CA certificate.")
    p.add_argument("--key", type=Path, help="This device's private key (`fedcore clients "
                   "keygen`): its identity on a server that admits enrolled devices only.")
    p.add_argument("--identity", type=Path, help="This device's identity certificate "
                   "(`fedcore clients certify`): secure aggregation only with the checks "
                   "against a malicious server (needs --key and --root-certificates).")
    p.add_argument("--models", type=Path, help="Folder of model files this device may load: "
                   "a run's `onnx:NAME` model is read from here only (default: none).")
    p.add_argument("--max-wait", type=float, default=120.0,
                   help="Stop after the SuperLink is gone this long (s; default 120).")
    p.add_argument("--state-dir", type=Path, help="A folder where the agent keeps its node "
                   "id (with --key): started again after a crash, it goes on as its node at "
                   "once instead of waiting up to 60 s for the old one to lapse.")
    p.add_argument("--verbose", action="store_true", help="Log every message exchanged.")
    return p


def setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    """The agent's log on stderr (warnings; every message with ``verbose``), and in
    ``log_file`` too if given."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(format="%(asctime)s %(message)s", handlers=handlers,
                        level=logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """``fedcore-device``: parse, check, join; the exit code."""
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.partition_id is not None and args.partition_id < 0:
            raise UsageError("--partition-id must be >= 0")
        if args.num_partitions is not None and args.num_partitions < 1:
            raise UsageError("--num-partitions must be >= 1")
        if args.max_wait < 1:
            raise UsageError("--max-wait must be >= 1")
        values = node_values(args.dataset, args.partition_id, args.num_partitions, args.data,
                             args.device)
        values.update(local_values(args.identity, args.key, args.root_certificates,
                                   args.models))
        if args.check is not None:
            return check(args.check, values)
        if not args.superlink:
            raise UsageError("--superlink: give HOST:PORT of the SuperLink (or --check "
                             "SCENARIO to check data)")
        if args.state_dir is not None and args.state_dir.exists() and not args.state_dir.is_dir():
            raise UsageError(f"--state-dir: not a folder: {args.state_dir}")
        options = JoinOptions(args.superlink, values, args.root_certificates, args.key,
                              args.max_wait, args.state_dir)
        check_connection(options)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    return join(options)


def check(scenario: Path, values: dict[str, Any]) -> int:
    """``--check``: one line; 0 if the data fits the scenario's model, else 2."""
    from deploy.check import check_offline
    from deploy.node import NodeConfigError, NodeData

    if not scenario.is_file():
        raise UsageError(f"--check: no such file: {scenario}")
    try:
        print(check_offline(scenario, NodeData.parse(values)), file=sys.stderr)
    except NodeConfigError as exc:
        raise UsageError(as_options(str(exc))) from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
