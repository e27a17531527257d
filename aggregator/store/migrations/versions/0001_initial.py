"""The first schema: runs, rounds and per-client results.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("backend", sa.String(40), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("num_selected", sa.Integer, nullable=False),
        sa.Column("num_accepted", sa.Integer, nullable=False),
        sa.Column("train_loss", sa.Float, nullable=False),
        sa.Column("test_loss", sa.Float, nullable=False),
        sa.Column("test_accuracy", sa.Float, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "client_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False, index=True),
        sa.Column("client_id", sa.Integer, nullable=False),
        sa.Column("node_id", sa.String(40), nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("train_loss", sa.Float, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("client_results")
    op.drop_table("rounds")
    op.drop_table("runs")
