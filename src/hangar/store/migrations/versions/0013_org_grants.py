"""per-organization grants of the configurable permissions

Reading machines' output (``logs:read``) and running commands in machines
(``machines:exec``) are permissions an organization gives to the roles it
chooses; a row holds the least role that has one (or ``none``).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "org_grants",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("permission", sa.String(length=32), nullable=False),
        sa.Column("least_role", sa.String(length=16), nullable=False),
        sa.Column("updated_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_org_grants_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", "permission", name=op.f("pk_org_grants")),
    )


def downgrade() -> None:
    op.drop_table("org_grants")
