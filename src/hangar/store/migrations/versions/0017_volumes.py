"""encrypted persistent volumes; each host's volume backend

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("host_id", sa.String(length=32), nullable=False),
        sa.Column("size_mb", sa.Integer(), nullable=False),
        sa.Column("encryption", sa.String(length=16), nullable=False),
        sa.Column("key_wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("machine_id", sa.String(length=32), nullable=True),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_volumes_app_id_apps")),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_volumes_host_id_hosts")),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_volumes_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_volumes")),
    )
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.create_index("ix_volumes_app_id_name", ["app_id", "name"], unique=False)
        batch_op.create_index(batch_op.f("ix_volumes_host_id"), ["host_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_volumes_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_volumes_org_id"), ["org_id"], unique=False)
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("volume_backend", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("volume_grows_online", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("volume_grows_online")
        batch_op.drop_column("volume_backend")
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_volumes_org_id"))
        batch_op.drop_index(batch_op.f("ix_volumes_machine_id"))
        batch_op.drop_index(batch_op.f("ix_volumes_host_id"))
        batch_op.drop_index("ix_volumes_app_id_name")
    op.drop_table("volumes")
