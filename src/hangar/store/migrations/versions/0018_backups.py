"""organizations' restic repositories; volumes' snapshots and the jobs hosts do on them

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

    utc = hangar.store.tables.UTCDateTime(timezone=True)
    op.create_table(
        "volume_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("volume_id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("finished_at", utc, nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_volume_jobs_org_id_orgs")),
        sa.ForeignKeyConstraint(
            ["volume_id"],
            ["volumes.id"],
            name=op.f("fk_volume_jobs_volume_id_volumes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_volume_jobs_host_id_hosts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_jobs")),
    )
    for column in ("org_id", "volume_id", "host_id"):
        op.create_index(op.f(f"ix_volume_jobs_{column}"), "volume_jobs", [column])
    op.create_table(
        "volume_snapshots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("volume_id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("consistent", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("backup_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_volume_snapshots_org_id_orgs")
        ),
        sa.ForeignKeyConstraint(
            ["volume_id"],
            ["volumes.id"],
            name=op.f("fk_volume_snapshots_volume_id_volumes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_volume_snapshots_host_id_hosts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volume_snapshots")),
    )
    for column in ("org_id", "volume_id"):
        op.create_index(op.f(f"ix_volume_snapshots_{column}"), "volume_snapshots", [column])
    op.create_table(
        "volume_snapshot_policies",
        sa.Column("volume_id", sa.String(length=32), nullable=False),
        sa.Column("scheduled", sa.Boolean(), nullable=False),
        sa.Column("keep_days", sa.Integer(), nullable=False),
        sa.Column("updated_by", sa.String(length=254), nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.ForeignKeyConstraint(
            ["volume_id"],
            ["volumes.id"],
            name=op.f("fk_volume_snapshot_policies_volume_id_volumes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("volume_id", name=op.f("pk_volume_snapshot_policies")),
    )


def downgrade() -> None:
    op.drop_table("volume_snapshot_policies")
    op.drop_table("volume_snapshots")
    op.drop_table("volume_jobs")
    op.drop_table("backup_repos")
