"""Versions of an app's secrets: every change to the deployed values makes the next one.

A version holds the ciphertexts of the values deployed when it was made,
sealed exactly as the app's current values are (under the app's data key,
bound to org, app, name and the name's own version): nothing here ever holds
plaintext. Each release records the version its machines receive, so a
rollback delivers the values the earlier release ran with.

Retention: every version a release of the app still names is kept, and so
are the newest ``KEEP_VERSIONS``; older ones are deleted when a new one is made.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hangar.store.tables import App, Release, Secret, SecretVersion, SecretVersionValue

__all__ = ["KEEP_VERSIONS", "current_version", "new_version", "version_exists"]

KEEP_VERSIONS = 10


def current_version(session: Session, app_id: str) -> int | None:
    """The app's newest secrets version; None if its secrets never changed."""
    return session.execute(
        select(func.max(SecretVersion.version)).where(SecretVersion.app_id == app_id)
    ).scalar_one_or_none()


def version_exists(session: Session, app_id: str, version: int) -> bool:
    return session.get(SecretVersion, (app_id, version)) is not None


def new_version(session: Session, app: App, *, actor: str) -> int:
    """The app's deployed values as its next version; older unneeded versions pruned."""
    session.flush()
    version = (current_version(session, app.id) or 0) + 1
    session.add(
        SecretVersion(
            app_id=app.id,
            version=version,
            created_by=actor,
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    deployed = session.execute(
        select(Secret).where(
            Secret.app_id == app.id, Secret.staged.is_(False), Secret.ciphertext.is_not(None)
        )
    ).scalars()
    for row in deployed:
        assert row.ciphertext is not None
        session.add(
            SecretVersionValue(
                app_id=app.id,
                version=version,
                name=row.name,
                value_version=row.version,
                ciphertext=row.ciphertext,
                digest=row.digest or "",
                key_version=row.key_version,
            )
        )
    session.flush()
    _prune(session, app.id, version)
    return version


def _prune(session: Session, app_id: str, newest: int) -> None:
    named = set(
        session.execute(
            select(Release.secrets_version).where(
                Release.app_id == app_id, Release.secrets_version.is_not(None)
            )
        ).scalars()
    )
    old = [
        v
        for v in session.execute(
            select(SecretVersion.version).where(
                SecretVersion.app_id == app_id,
                SecretVersion.version <= newest - KEEP_VERSIONS,
            )
        ).scalars()
        if v not in named
    ]
    if not old:
        return
    session.execute(
        delete(SecretVersionValue).where(
            SecretVersionValue.app_id == app_id, SecretVersionValue.version.in_(old)
        )
    )
    session.execute(
        delete(SecretVersion).where(SecretVersion.app_id == app_id, SecretVersion.version.in_(old))
    )
    session.flush()
