"""An app's data keys: the key its secrets are encrypted under, wrapped by the KEK.

An app gets its first data key with its first secret. Rotating makes a new
one, re-encrypts every value under it (the current ones and every kept
version's) and deletes the old one, in one transaction.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from hangar.crypto.keyring import Keyring
from hangar.crypto.secretbox import AppKey as DataKey
from hangar.crypto.secretbox import SecretRef, new_app_key
from hangar.errors import NotFound
from hangar.store.tables import App, AppKey, Secret, SecretVersionValue

__all__ = ["data_key", "rotate_data_key"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def data_key(session: Session, keyring: Keyring, app: App) -> DataKey:
    """The app's active data key, made the first time the app has a secret."""
    row = session.execute(
        select(AppKey).where(AppKey.app_id == app.id, AppKey.active.is_(True))
    ).scalar_one_or_none()
    if row is None:
        row = AppKey(
            app_id=app.id,
            version=1,
            wrapped=new_app_key(keyring, app.id, 1),
            active=True,
            created_at=_now(),
        )
        session.add(row)
        session.flush()
    return DataKey(keyring, app.id, row.version, row.wrapped)


def rotate_data_key(session: Session, keyring: Keyring, app: App) -> tuple[int, int]:
    """A new data key for the app; every value re-encrypted under it, the old key deleted.

    One transaction: either every value is under the new key, or nothing changed.
    Returns (new key version, values re-encrypted). Digests change with the key.
    """
    old_row = session.execute(
        select(AppKey).where(AppKey.app_id == app.id, AppKey.active.is_(True))
    ).scalar_one_or_none()
    if old_row is None:
        raise NotFound(f"app {app.name} has no secrets, so no data key to rotate")
    old = DataKey(keyring, app.id, old_row.version, old_row.wrapped)
    version = old_row.version + 1
    new_row = AppKey(
        app_id=app.id,
        version=version,
        wrapped=new_app_key(keyring, app.id, version),
        active=True,
        created_at=_now(),
    )
    new = DataKey(keyring, app.id, version, new_row.wrapped)
    rows = list(
        session.execute(
            select(Secret).where(Secret.app_id == app.id, Secret.ciphertext.is_not(None))
        ).scalars()
    )
    for row in rows:
        assert row.ciphertext is not None
        ref = SecretRef(app.org_id, app.id, row.name, row.version)
        plain = old.decrypt(ref, row.ciphertext)
        row.ciphertext = new.encrypt(ref, plain)
        row.digest = new.digest(plain)
        row.key_version = version
    # Every kept version too: a rollback may still deliver it.
    kept = session.execute(select(SecretVersionValue).where(SecretVersionValue.app_id == app.id))
    for value in kept.scalars():
        ref = SecretRef(app.org_id, app.id, value.name, value.value_version)
        plain = old.decrypt(ref, value.ciphertext)
        value.ciphertext = new.encrypt(ref, plain)
        value.digest = new.digest(plain)
        value.key_version = version
    session.delete(old_row)
    session.flush()
    session.add(new_row)
    session.flush()
    return version, len(rows)
