"""organizations' restic repositories

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backup_repos",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("location", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("password", sa.LargeBinary(), nullable=False),
        sa.Column("credential", sa.LargeBinary(), nullable=True),
        sa.Column("auth", sa.String(length=16), nullable=True),
        sa.Column("keep_daily", sa.Integer(), nullable=False),
        sa.Column("keep_weekly", sa.Integer(), nullable=False),
        sa.Column("keep_monthly", sa.Integer(), nullable=False),
        sa.Column("every_hours", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_backup_repos_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_backup_repos")),
    )


def downgrade() -> None:
    op.drop_table("backup_repos")
