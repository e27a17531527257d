"""The store's tables: runs, their rounds (with checkpoint digests), each client's part in a
round, the control commands an operator queues for a running aggregator, and the enrolled
devices (with the SuperLink node id each got per deployed run).

The schema is versioned by Alembic (``aggregator/store/migrations``); change it only together
with a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATUSES = ("running", "paused", "completed", "failed", "aborted")
FINISHED = ("completed", "failed", "aborted")
COMMANDS = ("pause", "abort", "set")


def utcnow() -> datetime:
    """Timestamps are stored in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of fedcore's schema."""


class Run(Base):
    """One federated training run (a simulation or a deployment)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="running")
    # where it ran: a simulation runtime (inprocess, flower) or "deployment" (column: backend)
    runtime: Mapped[str] = mapped_column("backend", String(40))
    seed: Mapped[int] = mapped_column(BigInteger)
    config: Mapped[dict] = mapped_column(JSON)
    model_spec: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)  # host:pid driving it

    rounds: Mapped[list[Round]] = relationship(
        back_populates="run", order_by="Round.number", cascade="all, delete-orphan"
    )


class Round(Base):
    """One committed round of a run; its checkpoint file was durable before the commit."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_rounds_run_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    num_selected: Mapped[int] = mapped_column(Integer)
    num_accepted: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: no server
    test_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # test set
    seconds: Mapped[float] = mapped_column(Float)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # e.g. simulated time
    # federated evaluation: each client's result and the summary (FederatedEvaluation.to_json)
    evaluation: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="rounds")
    clients: Mapped[list[ClientResult]] = relationship(
        back_populates="round", order_by="ClientResult.client_id", cascade="all, delete-orphan"
    )


class ClientResult(Base):
    """One selected client's outcome in one round (accepted, or the rejection reason)."""

    __tablename__ = "client_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    client_id: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(String(40))
    device_class: Mapped[str | None] = mapped_column(String(80), nullable=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    num_examples: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # extra reply metrics

    round: Mapped[Round] = relationship(back_populates="clients")


class Enrolment(Base):
    """A device allowed to join: its name, public key, data shard and device class.

    A device's identity is its key (Flower's SuperNode authentication); the server maps an
    authenticated node to this row. A revoked enrolment is kept (``revoked_at``) so its key
    stays refused and its past rounds keep their name.
    """

    __tablename__ = "enrolments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(Text)  # the OpenSSH line
    fingerprint: Mapped[str] = mapped_column(String(80), unique=True)
    partition_id: Mapped[int] = mapped_column(Integer, unique=True)  # its client id and shard
    device_class: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class NodeRegistration(Base):
    """Which SuperLink node id an enrolled key got for a run (Flower assigns it at registration)."""

    __tablename__ = "node_registrations"
    __table_args__ = (
        UniqueConstraint("run_id", "enrolment_id", name="uq_registrations_run_enrolment"),
        UniqueConstraint("run_id", "node_id", name="uq_registrations_run_node"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolments.id"))
    node_id: Mapped[str] = mapped_column(String(40))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    enrolment: Mapped[Enrolment] = relationship()


class Control(Base):
    """An operator's command for a run, applied by the aggregator at the next round boundary."""

    __tablename__ = "controls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    command: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    applied_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
