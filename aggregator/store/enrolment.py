"""Enrolled devices in the store: enrol, list, revoke, and map a SuperLink node to a device.

A device's identity is its public key. ``enroll`` records a name, the key (OpenSSH line and
fingerprint), the data shard it trains on (its client id) and its device class; names, keys
and shards are unique, so a key cannot be enrolled twice nor a shard given to two devices.
``revoke`` keeps the row with ``revoked_at`` set: the key stays refused, past rounds keep
their name. ``register_node`` records the node id Flower's SuperLink gave an enrolled key for
a run; ``directory`` is what the round loop reads before each round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from aggregator.store.models import Enrolment, NodeRegistration, utcnow
from aggregator.store.store import Store, StoreError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Enrolled:
    """One enrolment as the CLI and the server read it (no ORM session attached)."""

    name: str
    fingerprint: str
    public_key: str
    partition_id: int
    device_class: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    @classmethod
    def of(cls, row: Enrolment) -> Enrolled:
        """From a row."""
        return cls(
            row.name,
            row.fingerprint,
            row.public_key,
            row.partition_id,
            row.device_class,
            row.created_at,
            row.revoked_at,
        )


def check_name(name: str) -> str:
    """A device name: letters, digits, ``.``, ``_``, ``-``; 1..64 characters."""
    if not NAME.match(name):
        raise StoreError(
            f"device name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def enroll(
    store: Store,
    name: str,
    openssh: str,
    fingerprint: str,
    partition_id: int | None = None,
    device_class: str | None = None,
) -> Enrolled:
    """Enrol a device; ``StoreError`` names what clashes (name, key or shard)."""
    check_name(name)
    if partition_id is not None and partition_id < 0:
        raise StoreError(f"--partition must be >= 0, got {partition_id}")
    with store.session() as s, s.begin():
        for column, value, what in (
            (Enrolment.name, name, f"a device named {name!r} is already enrolled"),
            (Enrolment.fingerprint, fingerprint, "this public key is already enrolled"),
        ):
            other = s.scalars(select(Enrolment).where(column == value)).first()
            if other is not None:
                state = " (revoked)" if other.revoked_at is not None else ""
                raise StoreError(f"{what} as {other.name!r}{state}")
        if partition_id is None:
            top = s.scalar(select(func.max(Enrolment.partition_id)))
            partition_id = 0 if top is None else top + 1
        other = s.scalars(select(Enrolment).where(Enrolment.partition_id == partition_id)).first()
        if other is not None:
            raise StoreError(f"--partition {partition_id} is already {other.name!r}'s shard")
        row = Enrolment(
            name=name,
            public_key=openssh,
            fingerprint=fingerprint,
            partition_id=partition_id,
            device_class=device_class,
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        return Enrolled.of(row)


def list_enrolled(store: Store) -> list[Enrolled]:
    """Every enrolment, by shard."""
    with store.session() as s:
        return [
            Enrolled.of(r) for r in s.scalars(select(Enrolment).order_by(Enrolment.partition_id))
        ]


def get_enrolled(store: Store, name: str) -> Enrolled:
    """One enrolment by name; ``StoreError`` if there is none."""
    with store.session() as s:
        row = s.scalars(select(Enrolment).where(Enrolment.name == name)).first()
        if row is None:
            raise StoreError(f"no device named {name!r} is enrolled (see `fedcore clients list`)")
        return Enrolled.of(row)


def by_fingerprint(store: Store, fingerprint: str) -> Enrolled | None:
    """The enrolment holding this key, if any (revoked ones too)."""
    with store.session() as s:
        row = s.scalars(select(Enrolment).where(Enrolment.fingerprint == fingerprint)).first()
        return None if row is None else Enrolled.of(row)


def revoke(store: Store, name: str) -> Enrolled:
    """Revoke a device: refused from its next message on. ``StoreError`` if unknown or done."""
    with store.session() as s, s.begin():
        row = s.scalars(select(Enrolment).where(Enrolment.name == name)).first()
        if row is None:
            raise StoreError(f"no device named {name!r} is enrolled (see `fedcore clients list`)")
        if row.revoked_at is not None:
            raise StoreError(f"{name!r} was already revoked at {row.revoked_at:%Y-%m-%d %H:%M}")
        row.revoked_at = utcnow()
        s.flush()
        return Enrolled.of(row)


def register_node(store: Store, run_id: int, name: str, node_id: int) -> None:
    """Record that ``name``'s key is SuperLink node ``node_id`` in run ``run_id`` (replacing an
    earlier registration of the run, e.g. before a resume on a fresh SuperLink)."""
    with store.session() as s, s.begin():
        row = s.scalars(select(Enrolment).where(Enrolment.name == name)).first()
        if row is None:
            raise StoreError(f"no device named {name!r} is enrolled")
        s.execute(
            delete(NodeRegistration).where(
                NodeRegistration.run_id == run_id,
                (NodeRegistration.enrolment_id == row.id)
                | (NodeRegistration.node_id == str(node_id)),
            )
        )
        s.add(NodeRegistration(run_id=run_id, enrolment_id=row.id, node_id=str(node_id)))


def registered_nodes(store: Store, run_id: int) -> dict[int, Enrolled]:
    """``{node_id: enrolment}`` of every node registered for the run (revoked ones too)."""
    with store.session() as s:
        rows = s.scalars(select(NodeRegistration).where(NodeRegistration.run_id == run_id))
        return {int(r.node_id): Enrolled.of(r.enrolment) for r in rows}


def device_names(store: Store, run_id: int) -> dict[str, str]:
    """``{node id as stored in client results: enrolled name}`` for a run (empty if none)."""
    return {str(node): device.name for node, device in registered_nodes(store, run_id).items()}


__all__ = [
    "Enrolled",
    "device_names",
    "by_fingerprint",
    "check_name",
    "enroll",
    "get_enrolled",
    "list_enrolled",
    "register_node",
    "registered_nodes",
    "revoke",
]
