"""``fedcore clients``: a device's key pair, and the server's list of enrolled devices.

``keygen`` runs on the device; ``enroll``, ``list`` and ``revoke`` on the server (they use the
store). A revoked device is refused from its next message on, also in a running deployment.
``certify`` (or ``enroll --ca-key``) signs a device's identity certificate with the CA, for
SecAgg+'s checks against a malicious server; it runs wherever the CA's key is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.errors import err_console, fail
from cli.options import Db, DeviceClass, Json

app = typer.Typer(no_args_is_help=True)
CaKey = Annotated[
    Path | None,
    typer.Option(
        "--ca-key",
        help="Also sign its identity certificate with this CA key (certs/ca.key; ca.pem beside "
        "it), for SecAgg+'s checks against a malicious server.",
    ),
]
IdentityOut = Annotated[
    Path | None,
    typer.Option("--identity-out", help="Where to write it (default: NAME.identity.pem)."),
]
console = Console(highlight=False)


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for node.key and node.pub.")],
    as_json: Json = False,
) -> None:
    """Make this device's key pair (its identity); give node.pub to the operator."""
    from deploy.keys import KeyFileError, generate_node_keys

    try:
        private, public, key = generate_node_keys(out)
    except KeyFileError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write in {out}: {exc.strerror or exc}")
    if as_json:
        print(
            json.dumps(
                {
                    "private_key": str(private),
                    "public_key": str(public),
                    "fingerprint": key.fingerprint,
                }
            )
        )
        return
    err_console.print(
        f"wrote {private} (keep it on this device) and {public} ({key.fingerprint}).\n"
        f"  on the server: fedcore clients enroll NAME --public-key node.pub"
    )


@app.command("enroll")
def enroll(
    name: Annotated[str, typer.Argument(help="The device's name (letters, digits, . _ -).")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The device's node.pub (`clients keygen`).")
    ],
    partition: Annotated[
        int | None,
        typer.Option("--partition", min=0, help="Its data shard / client id (default: next)."),
    ] = None,
    device: DeviceClass = None,
    ca_key: CaKey = None,
    identity_out: IdentityOut = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Allow a device to join: its key becomes its identity, with a name, shard and class."""
    from aggregator.store import StoreError
    from aggregator.store.enrolment import check_name
    from aggregator.store.enrolment import enroll as enroll_device
    from cli.store_access import open_store
    from deploy.keys import KeyFileError, read_public_key

    if device is not None:
        from device_profiles import get_profile
        from device_profiles.profile import ProfileError

        try:
            get_profile(device)
        except ProfileError as exc:
            fail(f"--device-class: {exc}")
    try:
        key = read_public_key(public_key)
    except KeyFileError as exc:
        fail(f"--public-key: {exc}")
    try:
        check_name(name)
    except StoreError as exc:
        fail(str(exc))
    identity = None
    if ca_key is not None:
        identity = _certify(name, key.openssh, ca_key, identity_out or Path(f"{name}.identity.pem"))
    elif identity_out is not None:
        fail("--identity-out: needs --ca-key (the CA that signs the identity certificate)")
    try:
        row = enroll_device(
            open_store(db, create=True), name, key.openssh, key.fingerprint, partition, device
        )
    except StoreError as exc:
        if identity is not None:
            identity.unlink(missing_ok=True)
        fail(str(exc))
    if as_json:
        print(json.dumps({**_as_dict(row), "identity": str(identity) if identity else None}))
        return
    err_console.print(
        f"enrolled {row.name}: partition {row.partition_id}, "
        f"device {row.device_class or '-'}, key {row.fingerprint}"
        + (f"; identity certificate {identity} (put it in its bundle)" if identity else "")
    )


@app.command("certify")
def certify(
    name: Annotated[str, typer.Argument(help="The device's enrolled name.")],
    public_key: Annotated[
        Path, typer.Option("--public-key", help="The device's node.pub (`clients keygen`).")
    ],
    ca_key: Annotated[Path, typer.Option("--ca-key", help="The CA's key (certs/ca.key).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write its identity certificate.")],
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
) -> None:
    """Sign a device's identity certificate (name + key) with the CA; no store needed, so
    the CA's key can stay on another machine than the server."""
    from aggregator.store import StoreError
    from aggregator.store.enrolment import check_name
    from deploy.keys import KeyFileError, read_public_key

    try:
        check_name(name)
    except StoreError as exc:
        fail(str(exc))
    try:
        key = read_public_key(public_key)
    except KeyFileError as exc:
        fail(f"--public-key: {exc}")
    written = _certify(name, key.openssh, ca_key, out, days)
    err_console.print(f"wrote {written}: identity of {name} ({key.fingerprint})")


def _certify(name: str, openssh: str, ca_key: Path, out: Path, days: int = 365) -> Path:
    """Issue the identity certificate (CA certificate ``ca.pem`` beside ``ca_key``)."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    from deploy.certs import CA_CERT, CertError, issue_identity

    try:
        public = load_ssh_public_key(openssh.encode("ascii"))
        return issue_identity(ca_key.parent / CA_CERT, ca_key, name, public, out, days)  # type: ignore[arg-type]
    except CertError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write {out}: {exc.strerror or exc}")


@app.command("list")
def list_clients(db: Db = None, as_json: Json = False) -> None:
    """The enrolled devices (revoked ones marked)."""
    from aggregator.store.enrolment import list_enrolled
    from cli.store_access import open_store

    rows = list_enrolled(open_store(db))
    if as_json:
        print(json.dumps([_as_dict(r) for r in rows]))
        return
    table = Table()
    for column in ("name", "partition", "device", "key", "enrolled", "status"):
        table.add_column(column)
    for r in rows:
        status = "active" if r.active else f"revoked {r.revoked_at:%Y-%m-%d %H:%M}"
        table.add_row(
            r.name,
            str(r.partition_id),
            r.device_class or "-",
            r.fingerprint,
            f"{r.created_at:%Y-%m-%d %H:%M}",
            status,
        )
    console.print(table)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The enrolled device's name.")],
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Revoke a device: refused from its next message on, also in a running deployment."""
    from aggregator.store import StoreError
    from aggregator.store.enrolment import revoke as revoke_device
    from cli.store_access import open_store

    try:
        row = revoke_device(open_store(db), name)
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(_as_dict(row)))
        return
    err_console.print(f"revoked {row.name} ({row.fingerprint}): refused from its next message")


def _as_dict(row: object) -> dict:
    from aggregator.store.enrolment import Enrolled

    assert isinstance(row, Enrolled)
    return {
        "name": row.name,
        "partition": row.partition_id,
        "device": row.device_class,
        "fingerprint": row.fingerprint,
        "enrolled_at": row.created_at.isoformat(),
        "revoked_at": None if row.revoked_at is None else row.revoked_at.isoformat(),
        "active": row.active,
    }


@app.command("bundle")
def bundle(
    name: Annotated[str, typer.Option("--name", help="The device's name (as enrolled).")],
    superlink: Annotated[
        str, typer.Option("--superlink", help="HOST:PORT devices use to reach the server.")
    ],
    device: Annotated[
        str,
        typer.Option("--device-class", "--device", help="Its device class: sets MemoryMax."),
    ],
    ca: Annotated[Path, typer.Option("--ca", help="The CA certificate (certs/ca.pem).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the bundle into.")],
    data: Annotated[
        str, typer.Option("--data", help="Where the device will keep its examples (.npz).")
    ] = "/var/lib/fedcore/data.npz",
    agent: Annotated[
        str, typer.Option("--agent", help="Where fedcore-device will be on the device.")
    ] = "/opt/fedcore/venv/bin/fedcore-device",
    generate_key: Annotated[
        bool,
        typer.Option(
            "--generate-key",
            help="Put a new key pair in the bundle (default: the device makes its own at install).",
        ),
    ] = False,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            help="Its identity certificate (`clients certify`): secure aggregation with the "
            "checks against a malicious server.",
        ),
    ] = None,
    ca_key: Annotated[
        Path | None,
        typer.Option(
            "--ca-key",
            help="With --generate-key: also issue the new key's identity certificate with this "
            "CA key (certs/ca.key).",
        ),
    ] = None,
) -> None:
    """Write what a device needs: CA, env file, systemd unit, install and Termux scripts."""
    from aggregator.store import StoreError
    from aggregator.store.enrolment import check_name
    from deploy.bundle import BundleError, BundleSpec, write_bundle
    from deploy.processes import split_address
    from device_profiles import get_profile
    from device_profiles.profile import ProfileError

    try:
        check_name(name)
    except StoreError as exc:
        fail(f"--name: {exc}")
    try:
        split_address(superlink)
    except ValueError as exc:
        fail(f"--superlink: {exc}")
    try:
        profile = get_profile(device)
    except ProfileError as exc:
        fail(f"--device-class: {exc}")
    if not data.startswith("/") or not agent.startswith("/"):
        fail("--data and --agent must be absolute paths on the device")
    budget, has_identity = profile.memory_budget_bytes, identity is not None or ca_key is not None
    spec = BundleSpec(name, superlink, device, budget, data, agent, has_identity)
    try:
        written = write_bundle(out, spec, ca, generate_key, identity, ca_key)
    except BundleError as exc:
        fail(str(exc))
    err_console.print(
        f"wrote {len(written)} files to {out} for {name} "
        f"(MemoryMax {profile.memory_budget_bytes // 2**20} MiB from {device})"
    )
