"""organizations' log sinks

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_sinks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_log_sinks_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_sinks")),
    )
    with op.batch_alter_table("log_sinks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_log_sinks_org_id"), ["org_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("log_sinks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_sinks_org_id"))
    op.drop_table("log_sinks")
