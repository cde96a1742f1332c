"""hosts' WireGuard mesh keys and endpoints

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mesh_public_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("mesh_endpoint", sa.String(length=300), nullable=True))
        batch_op.add_column(
            sa.Column(
                "mesh_handshake_at",
                hangar.store.tables.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("mesh_handshake_at")
        batch_op.drop_column("mesh_endpoint")
        batch_op.drop_column("mesh_public_key")
