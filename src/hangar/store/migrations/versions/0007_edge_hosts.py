"""the edge role of joined hosts

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("edge", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("edge", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.drop_column("edge")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("edge")
