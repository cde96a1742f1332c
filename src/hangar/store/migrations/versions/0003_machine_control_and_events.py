"""machine control and events

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machine_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("machine_id", sa.String(length=32), nullable=False),
        sa.Column("time", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machine_events")),
    )
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_machine_events_machine_id"), ["machine_id"], unique=False
        )

    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("stop_signal", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("stop_timeout", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("lease_nonce_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=254), nullable=True))
        batch_op.add_column(
            sa.Column(
                "lease_expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(sa.Column("one_off", sa.Boolean(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("image", sa.String(length=1000), nullable=True))
        batch_op.add_column(sa.Column("args", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("args")
        batch_op.drop_column("image")
        batch_op.drop_column("one_off")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("lease_nonce_hash")
        batch_op.drop_column("stop_timeout")
        batch_op.drop_column("stop_signal")
        batch_op.drop_column("generation")

    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machine_events_machine_id"))

    op.drop_table("machine_events")
