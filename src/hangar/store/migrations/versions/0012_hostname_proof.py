"""host names held only after proof of control

Many apps may claim a host name; one holds it once it proved control (a
validated ACME order, or a DNS TXT record). ACME certificates already issued
count as proven; imported ones must be proven with their TXT record.

Revision ID: 0012
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("proof_token", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("proven_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.drop_constraint("uq_certificates_hostname", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_certificates_app_id"), ["app_id", "hostname"]
        )
        batch_op.create_index(batch_op.f("ix_certificates_hostname"), ["hostname"], unique=False)
    op.execute(
        "UPDATE certificates SET proven_at = updated_at WHERE source = 'acme' AND status = 'valid'"
    )
    op.create_index(
        "uq_certificates_proven_hostname",
        "certificates",
        ["hostname"],
        unique=True,
        sqlite_where=sa.text("proven_at IS NOT NULL"),
        postgresql_where=sa.text("proven_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_certificates_proven_hostname", table_name="certificates")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_hostname"))
        batch_op.drop_constraint(batch_op.f("uq_certificates_app_id"), type_="unique")
        batch_op.create_unique_constraint("uq_certificates_hostname", ["hostname"])
        batch_op.drop_column("proven_at")
        batch_op.drop_column("proof_token")
