"""Federated evaluation per round (each client's result and the summary, as JSON); the
server's test figures become optional (a deployment may have no test set on the server).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as t:
        t.add_column(sa.Column("evaluation", sa.JSON, nullable=True))
        t.alter_column("test_loss", existing_type=sa.Float, nullable=True)
        t.alter_column("test_accuracy", existing_type=sa.Float, nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("rounds") as t:
        t.alter_column("test_accuracy", existing_type=sa.Float, nullable=False)
        t.alter_column("test_loss", existing_type=sa.Float, nullable=False)
        t.drop_column("evaluation")
