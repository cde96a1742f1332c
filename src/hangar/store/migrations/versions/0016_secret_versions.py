"""versions of apps' secrets; each release names the version it deploys

Revision ID: 0016
Revises: 0015

An app that has deployed secrets gets them as its version 1 (the same
ciphertexts, copied as they are: nothing is decrypted), and each of its
releases is recorded as deploying version 1, which is what they ran with.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import hangar.store.tables

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_versions",
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_secret_versions_app_id_apps")
        ),
        sa.PrimaryKeyConstraint("app_id", "version", name=op.f("pk_secret_versions")),
    )
    op.create_table(
        "secret_version_values",
        sa.Column("app_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value_version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_secret_version_values_app_id_apps")
        ),
        sa.PrimaryKeyConstraint("app_id", "version", "name", name=op.f("pk_secret_version_values")),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secrets_version", sa.Integer(), nullable=True))

    meta = sa.MetaData()
    secrets = sa.Table(
        "secrets",
        meta,
        sa.Column("app_id", sa.String(32)),
        sa.Column("name", sa.String(255)),
        sa.Column("version", sa.Integer()),
        sa.Column("staged", sa.Boolean()),
        sa.Column("ciphertext", sa.LargeBinary()),
        sa.Column("digest", sa.String(64)),
        sa.Column("key_version", sa.Integer()),
        sa.Column("created_by", sa.String(254)),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True)),
    )
    versions = sa.Table(
        "secret_versions",
        meta,
        sa.Column("app_id", sa.String(32)),
        sa.Column("version", sa.Integer()),
        sa.Column("created_by", sa.String(254)),
        sa.Column("created_at", hangar.store.tables.UTCDateTime(timezone=True)),
    )
    values = sa.Table(
        "secret_version_values",
        meta,
        sa.Column("app_id", sa.String(32)),
        sa.Column("version", sa.Integer()),
        sa.Column("name", sa.String(255)),
        sa.Column("value_version", sa.Integer()),
        sa.Column("ciphertext", sa.LargeBinary()),
        sa.Column("digest", sa.String(64)),
        sa.Column("key_version", sa.Integer()),
    )
    releases = sa.Table(
        "releases",
        meta,
        sa.Column("app_id", sa.String(32)),
        sa.Column("secrets_version", sa.Integer()),
    )
    deployed = sa.and_(secrets.c.staged == sa.false(), secrets.c.ciphertext.is_not(None))
    conn = op.get_bind()
    apps = conn.execute(
        sa.select(
            secrets.c.app_id,
            sa.func.max(secrets.c.created_by).label("by"),
            sa.func.max(secrets.c.created_at).label("at"),
        )
        .where(deployed)
        .group_by(secrets.c.app_id)
    ).all()
    for app_id, by, at in apps:
        conn.execute(
            sa.insert(versions).values(app_id=app_id, version=1, created_by=by, created_at=at)
        )
        conn.execute(
            sa.insert(values).from_select(
                [
                    "app_id",
                    "version",
                    "name",
                    "value_version",
                    "ciphertext",
                    "digest",
                    "key_version",
                ],
                sa.select(
                    secrets.c.app_id,
                    sa.literal(1),
                    secrets.c.name,
                    secrets.c.version,
                    secrets.c.ciphertext,
                    sa.func.coalesce(secrets.c.digest, ""),
                    secrets.c.key_version,
                ).where(deployed, secrets.c.app_id == app_id),
            )
        )
        conn.execute(
            sa.update(releases).where(releases.c.app_id == app_id).values(secrets_version=1)
        )


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("secrets_version")
    op.drop_table("secret_version_values")
    op.drop_table("secret_versions")
