"""Bytes on the wire and privacy spent; checkpoints in the round row; model spec and owner of
a run; device class of a client; control commands.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as t:
        t.alter_column("seed", type_=sa.BigInteger, existing_nullable=False)
        t.add_column(sa.Column("model_spec", sa.JSON, nullable=True))
        t.add_column(sa.Column("owner", sa.String(200), nullable=True))
    with op.batch_alter_table("rounds") as t:
        t.add_column(sa.Column("bytes_up", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("bytes_down", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("epsilon", sa.Float, nullable=True))
        t.add_column(sa.Column("checkpoint_path", sa.Text, nullable=True))
        t.add_column(sa.Column("checkpoint_sha256", sa.String(64), nullable=True))
        t.create_unique_constraint("uq_rounds_run_number", ["run_id", "number"])
    with op.batch_alter_table("client_results") as t:
        t.add_column(sa.Column("device_class", sa.String(80), nullable=True))
        t.add_column(sa.Column("bytes_up", sa.BigInteger, nullable=False, server_default="0"))
        t.add_column(sa.Column("bytes_down", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "controls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("command", sa.String(20), nullable=False),
        sa.Column("payload", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_round", sa.Integer, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("controls")
    with op.batch_alter_table("client_results") as t:
        for name in ("bytes_down", "bytes_up", "device_class"):
            t.drop_column(name)
    with op.batch_alter_table("rounds") as t:
        t.drop_constraint("uq_rounds_run_number", type_="unique")
        for name in ("checkpoint_sha256", "checkpoint_path", "epsilon", "bytes_down", "bytes_up"):
            t.drop_column(name)
    with op.batch_alter_table("runs") as t:
        t.drop_column("owner")
        t.drop_column("model_spec")
        t.alter_column("seed", type_=sa.Integer, existing_nullable=False)
