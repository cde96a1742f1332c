"""people sign in: identity providers, sessions, pending sign-ins, device codes, policies

Revision ID: 0019
Revises: 0018

Session tokens are tokens whose ``session_id`` names a row of ``sessions``;
users may be disabled (``disabled_at``). Nothing existing changes meaning.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_providers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("client_secret", sa.LargeBinary(), nullable=True),
        sa.Column("scopes", sa.String(length=500), nullable=False),
        sa.Column("groups_claim", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_providers")),
        sa.UniqueConstraint("name", name=op.f("uq_identity_providers_name")),
    )
    op.create_table(
        "org_policies",
        sa.Column("org_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_org_policies_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", "key", name=op.f("pk_org_policies")),
    )
    op.create_table(
        "pending_signins",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("idp_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("return_to", sa.String(length=500), nullable=False),
        sa.Column("client_challenge", sa.String(length=128), nullable=False),
        sa.Column("org_hint", sa.String(length=63), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("steps", sa.Text(), nullable=False),
        sa.Column("claims", sa.Text(), nullable=False),
        sa.Column("client_addr", sa.String(length=64), nullable=True),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cli_code", sa.String(length=64), nullable=True),
        sa.Column("done_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["idp_id"],
            ["identity_providers.id"],
            name=op.f("fk_pending_signins_idp_id_identity_providers"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_pending_signins_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_signins")),
        sa.UniqueConstraint("cli_code", name=op.f("uq_pending_signins_cli_code")),
        sa.UniqueConstraint("state", name=op.f("uq_pending_signins_state")),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("idp", sa.String(length=63), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("idle_timeout_s", sa.Integer(), nullable=False),
        sa.Column("revoked_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("mfa_verified_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("amr", sa.Text(), nullable=False),
        sa.Column("client_addr", sa.String(length=64), nullable=True),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "user_identities",
        sa.Column("idp_id", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.LargeBinary(), nullable=True),
        sa.Column("last_signin_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("checked_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["idp_id"],
            ["identity_providers.id"],
            name=op.f("fk_user_identities_idp_id_identity_providers"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_identities_user_id_users")
        ),
        sa.PrimaryKeyConstraint("idp_id", "subject", name=op.f("pk_user_identities")),
    )
    with op.batch_alter_table("user_identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_identities_user_id"), ["user_id"], unique=False)

    op.create_table(
        "device_codes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_code", sa.String(length=16), nullable=False),
        sa.Column("client_addr", sa.String(length=64), nullable=True),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("approved_session_id", sa.String(length=32), nullable=True),
        sa.Column("denied", sa.Boolean(), nullable=False),
        sa.Column("collected_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["approved_session_id"],
            ["sessions.id"],
            name=op.f("fk_device_codes_approved_session_id_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_codes")),
        sa.UniqueConstraint("user_code", name=op.f("uq_device_codes_user_code")),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_tokens_session_id"), ["session_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_tokens_session_id_sessions"), "sessions", ["session_id"], ["id"]
        )

    # The token `hangar server init` printed is the installation's break-glass token.
    op.execute(
        "INSERT INTO settings (key, value) SELECT 'break_glass_token_id', id FROM tokens "
        "WHERE name = 'bootstrap admin token' AND org_id IS NULL "
        "AND created_at = (SELECT MIN(created_at) FROM tokens "
        "WHERE name = 'bootstrap admin token' AND org_id IS NULL)"
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disabled_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    op.execute("DELETE FROM settings WHERE key = 'break_glass_token_id'")
    # A plain DROP COLUMN (SQLite 3.35 and later have it): SQLite's batch mode
    # would copy and drop the users table, which other tables' keys refer to.
    op.execute("ALTER TABLE users DROP COLUMN disabled_at")

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tokens_session_id_sessions"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tokens_session_id"))
        batch_op.drop_column("session_id")

    op.drop_table("device_codes")
    with op.batch_alter_table("user_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_identities_user_id"))

    op.drop_table("user_identities")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_user_id"))

    op.drop_table("sessions")
    op.drop_table("pending_signins")
    op.drop_table("org_policies")
    op.drop_table("identity_providers")
