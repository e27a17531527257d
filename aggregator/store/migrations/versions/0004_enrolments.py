"""Enrolled devices (name, public key, shard, device class) and their node ids per run.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrolments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.String(80), nullable=False, unique=True),
        sa.Column("partition_id", sa.Integer, nullable=False, unique=True),
        sa.Column("device_class", sa.String(80), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "node_registrations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("enrolment_id", sa.Integer, sa.ForeignKey("enrolments.id"), nullable=False),
        sa.Column("node_id", sa.String(40), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "enrolment_id", name="uq_registrations_run_enrolment"),
        sa.UniqueConstraint("run_id", "node_id", name="uq_registrations_run_node"),
    )


def downgrade() -> None:
    op.drop_table("node_registrations")
    op.drop_table("enrolments")
