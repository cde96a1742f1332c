"""host join tokens, host certificates, pinned image digests, machine memory

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=True),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("host_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_join_tokens")),
    )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cert_serial", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("prev_cert_serial", sa.String(length=40), nullable=True))
        batch_op.add_column(
            sa.Column(
                "cert_expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True
            )
        )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_digest", sa.String(length=80), nullable=True))
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_digest", sa.String(length=80), nullable=True))
        batch_op.add_column(
            sa.Column("memory_mb", sa.Integer(), server_default="256", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("memory_mb")
        batch_op.drop_column("image_digest")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("image_digest")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("cert_expires_at")
        batch_op.drop_column("prev_cert_serial")
        batch_op.drop_column("cert_serial")
    op.drop_table("join_tokens")
