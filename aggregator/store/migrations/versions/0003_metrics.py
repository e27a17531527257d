"""Per-round and per-client metrics as JSON (simulated seconds, energy, FLOPs, peak bytes).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as t:
        t.add_column(sa.Column("metrics", sa.JSON, nullable=True))
    with op.batch_alter_table("client_results") as t:
        t.add_column(sa.Column("metrics", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("client_results") as t:
        t.drop_column("metrics")
    with op.batch_alter_table("rounds") as t:
        t.drop_column("metrics")
