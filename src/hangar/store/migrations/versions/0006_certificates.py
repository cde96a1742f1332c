"""edge certificates and ACME challenges

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fullchain_pem", sa.Text(), nullable=True),
        sa.Column("key_wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("not_before", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("not_after", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("order_url", sa.String(length=500), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], name=op.f("fk_certificates_app_id_apps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("hostname", name=op.f("uq_certificates_hostname")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_app_id"), ["app_id"], unique=False)
    op.create_table(
        "acme_challenges",
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("key_authorization", sa.String(length=300), nullable=False),
        sa.Column("expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_acme_challenges")),
    )


def downgrade() -> None:
    op.drop_table("acme_challenges")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_app_id"))
    op.drop_table("certificates")
