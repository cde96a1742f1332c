"""log sinks' index, sealed credential and its scheme

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_sinks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_name", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("credential", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("auth", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("log_sinks", schema=None) as batch_op:
        batch_op.drop_column("auth")
        batch_op.drop_column("credential")
        batch_op.drop_column("index_name")
