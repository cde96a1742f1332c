"""Secrets in the store: set, unset, stage, deploy, deliver. Values never leave as plaintext.

Values are validated before anything is written, and a request either
stores every value it names or none. Plaintext exists only in this process's
memory while a value is encrypted, and again while it is decrypted for a
machine that is starting, for delivery to that machine's host.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext, AuditLog
from hangar.controlplane.machines import create_release, release_config
from hangar.crypto.keyring import Keyring
from hangar.crypto.secretbox import AppKey as DataKey
from hangar.crypto.secretbox import SecretRef, new_app_key
from hangar.errors import Conflict, NotFound, PermissionDenied, ValidationError
from hangar.store.db import Database
from hangar.store.tables import App, AppKey, Machine, Release, Secret

__all__ = [
    "MAX_VALUE_BYTES",
    "SecretInfo",
    "apply_staged",
    "busy_release",
    "deliver",
    "list_secrets",
    "machine_secrets",
    "roll_out",
    "rotate_data_key",
    "set_secrets",
    "unset_secrets",
    "validate_name",
]

MAX_VALUE_BYTES = 64 << 10
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"secret name {name!r} is not an environment variable name",
            hint="letters, digits and underscores, not starting with a digit",
        )
    if name.upper().startswith("HANGAR_"):
        raise ValidationError(f"secret name {name!r} is reserved: HANGAR_ names are Hangar's")
    return name


def _validate(values: Sequence[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for name, value in values:
        validate_name(name)
        if name in seen:
            raise ValidationError(f"secret {name} is given twice")
        seen.add(name)
        size = len(value.encode())
        if size > MAX_VALUE_BYTES:
            raise ValidationError(
                f"secret {name} is {size} bytes; the most a value may hold is 64 KiB"
            )
        if "\x00" in value:
            raise ValidationError(f"secret {name} contains a NUL byte, which no environment holds")


def _data_key(session: Session, keyring: Keyring, app: App) -> DataKey:
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


def _next_version(session: Session, app_id: str, name: str) -> int:
    highest = session.execute(
        select(func.max(Secret.version)).where(Secret.app_id == app_id, Secret.name == name)
    ).scalar_one_or_none()
    return (highest or 0) + 1


@dataclass(frozen=True)
class SecretInfo:
    name: str
    digest: str | None
    version: int
    status: str  # deployed, staged, staged-unset
    created_by: str
    created_at: dt.datetime


def set_secrets(
    session: Session,
    keyring: Keyring,
    app: App,
    values: Sequence[tuple[str, str]],
    *,
    stage: bool,
    actor: str,
) -> list[SecretInfo]:
    """Encrypt and store ``values`` (deployed now, or staged); names and digests back."""
    if not values:
        raise ValidationError("no secrets given")
    _validate(values)
    key = _data_key(session, keyring, app)
    out = []
    for name, value in values:
        version = _next_version(session, app.id, name)
        ref = SecretRef(app.org_id, app.id, name, version)
        plain = value.encode()
        session.execute(
            delete(Secret).where(
                Secret.app_id == app.id,
                Secret.name == name,
                # Staging replaces only a staged change; setting now replaces both.
                *([Secret.staged.is_(True)] if stage else []),
            )
        )
        row = Secret(
            app_id=app.id,
            name=name,
            version=version,
            staged=stage,
            ciphertext=key.encrypt(ref, plain),
            digest=key.digest(plain),
            key_version=key.key_version,
            created_by=actor,
            created_at=_now(),
        )
        session.add(row)
        out.append(_info(row))
    session.flush()
    return out


def unset_secrets(
    session: Session, app: App, names: Iterable[str] | None, *, stage: bool, actor: str
) -> list[str]:
    """Remove names (all with None), now or staged; the names affected."""
    current = {
        r.name for r in session.execute(select(Secret).where(Secret.app_id == app.id)).scalars()
    }
    wanted = sorted(current) if names is None else [validate_name(n) for n in names]
    missing = [n for n in wanted if n not in current]
    if missing:
        raise NotFound(f"app {app.name} has no secret {', '.join(missing)}")
    for name in wanted:
        if stage:
            session.execute(
                delete(Secret).where(
                    Secret.app_id == app.id, Secret.name == name, Secret.staged.is_(True)
                )
            )
            session.add(
                Secret(
                    app_id=app.id,
                    name=name,
                    version=_next_version(session, app.id, name),
                    staged=True,
                    ciphertext=None,
                    digest=None,
                    key_version=0,
                    created_by=actor,
                    created_at=_now(),
                )
            )
        else:
            session.execute(delete(Secret).where(Secret.app_id == app.id, Secret.name == name))
    session.flush()
    return wanted


def apply_staged(session: Session, app: App) -> list[str]:
    """Make staged changes the deployed values; the names changed."""
    staged = list(
        session.execute(
            select(Secret).where(Secret.app_id == app.id, Secret.staged.is_(True))
        ).scalars()
    )
    for row in staged:
        session.execute(
            delete(Secret).where(
                Secret.app_id == app.id, Secret.name == row.name, Secret.staged.is_(False)
            )
        )
        session.flush()
        if row.ciphertext is None:
            session.delete(row)
        else:
            row.staged = False
    session.flush()
    return sorted(r.name for r in staged)


def _info(row: Secret) -> SecretInfo:
    if not row.staged:
        status = "deployed"
    else:
        status = "staged" if row.ciphertext is not None else "staged-unset"
    return SecretInfo(row.name, row.digest, row.version, status, row.created_by, row.created_at)


def list_secrets(session: Session, app_id: str) -> list[SecretInfo]:
    rows = session.execute(
        select(Secret).where(Secret.app_id == app_id).order_by(Secret.name, Secret.staged)
    ).scalars()
    return [_info(r) for r in rows]


def machine_secrets(
    session: Session, keyring: Keyring, machine: Machine
) -> tuple[dict[str, str], dict[str, str]]:
    """The deployed values for a machine's app: (values, digests). In memory only."""
    app = session.get(App, machine.app_id)
    if app is None:
        raise NotFound(f"machine {machine.id} has no app")
    rows = list(
        session.execute(
            select(Secret).where(Secret.app_id == app.id, Secret.staged.is_(False))
        ).scalars()
    )
    if not rows:
        return {}, {}
    key = _data_key(session, keyring, app)
    values: dict[str, str] = {}
    for row in rows:
        assert row.ciphertext is not None
        ref = SecretRef(app.org_id, app.id, row.name, row.version)
        values[row.name] = key.decrypt(ref, row.ciphertext).decode()
    return values, {r.name: r.digest or "" for r in rows}


def busy_release(session: Session, app_id: str) -> None:
    """Conflict if a deploy is under way (a secrets rollout would collide with it)."""
    running = session.execute(
        select(Release.version).where(
            Release.app_id == app_id, Release.status.in_(("pending", "running"))
        )
    ).first()
    if running is not None:
        raise Conflict(
            f"release v{running[0]} is deploying",
            hint="wait for it, or stage the change with --stage and deploy it later",
        )


def roll_out(session: Session, app: App, *, actor: str) -> Release | None:
    """A release of the live image and configuration, so machines restart with the
    deployed secrets (health-gated, rolling back like any deploy). None if nothing is live.
    """
    live = session.execute(
        select(Release)
        .where(Release.app_id == app.id, Release.status == "complete")
        .order_by(Release.version.desc())
        .limit(1)
    ).scalar_one_or_none()
    if live is None:
        return None
    return create_release(
        session,
        app,
        image=live.image,
        image_digest=live.image_digest,
        config=release_config(live),
        strategy=None,
        actor=actor,
    )


def deliver(
    db: Database,
    keyring: Keyring,
    audit: AuditLog,
    ctx: AuditContext,
    *,
    host_id: str,
    machine_id: str,
) -> dict[str, str]:
    """The secrets of a machine that this host is starting; refusals are audited.

    Only the host the machine is assigned to, and only while the machine is
    meant to run, gets its values. Every delivery is an audit event with the
    names and digests (never the values).
    """

    def allowed(session: Session) -> tuple[Machine | None, App | None, bool]:
        machine = session.get(Machine, machine_id)
        app = session.get(App, machine.app_id) if machine is not None else None
        ok = (
            machine is not None
            and app is not None
            and machine.host_id == host_id
            and machine.desired == "started"
        )
        return machine, app, ok

    # Read first: a machine of an app without secrets costs no write (and no fsync).
    with db.read() as session:
        machine, app, ok = allowed(session)
        values: dict[str, str] = {}
        digests: dict[str, str] = {}
        if ok and machine is not None:
            values, digests = machine_secrets(session, keyring, machine)
    if ok and not values:
        return {}
    if ok and app is not None:
        with db.write() as session:
            # Audited before the values leave; still meant to run on this host?
            _, app, ok = allowed(session)
            if ok and app is not None:
                audit.record(
                    session,
                    ctx,
                    org_id=app.org_id,
                    action="secrets.deliver",
                    target=machine_id,
                    detail={"host": host_id, "secrets": digests},
                )
        if ok:
            return values
    with db.write() as session:
        audit.record(
            session,
            ctx,
            org_id=app.org_id if app is not None else None,
            action="secrets.deliver",
            target=machine_id,
            outcome="denied",
            detail={"host": host_id, "reason": "machine not starting on this host"},
        )
    raise PermissionDenied(f"machine {machine_id} is not starting on this host")


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
    session.delete(old_row)
    session.flush()
    session.add(new_row)
    session.flush()
    return version, len(rows)
