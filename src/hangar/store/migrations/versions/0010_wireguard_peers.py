"""people's WireGuard peers on an organization's network

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wireguard_peers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("network", sa.String(length=63), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("gateway_host_id", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_wireguard_peers_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wireguard_peers")),
        sa.UniqueConstraint("org_id", "name", name=op.f("uq_wireguard_peers_org_id")),
        sa.UniqueConstraint("address", name=op.f("uq_wireguard_peers_address")),
    )


def downgrade() -> None:
    op.drop_table("wireguard_peers")
