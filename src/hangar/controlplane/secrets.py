"""Secrets in the store: set, unset, stage, deploy, deliver. Values never leave as plaintext.

Values are validated before anything is written, and a request either
stores every value it names or none. Plaintext exists only in this process's
memory while a value is encrypted, and again while it is decrypted for a
machine that is starting, for delivery to that machine's host.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext, AuditLog
from hangar.controlplane.changes import Event, change
from hangar.controlplane.datakeys import data_key, rotate_data_key
from hangar.controlplane.releases import busy_release, roll_out
from hangar.controlplane.secretversions import current_version, new_version
from hangar.controlplane.state import ControlPlane
from hangar.crypto.keyring import Keyring
from hangar.crypto.secretbox import SecretRef
from hangar.errors import NotFound, PermissionDenied, ValidationError, audited
from hangar.store.db import Database
from hangar.store.tables import App, Machine, Release, Secret, SecretVersionValue
from hangar.telemetry.metrics import SECRET_DELIVERIES

__all__ = [
    "MAX_VALUE_BYTES",
    "SecretInfo",
    "SecretsChange",
    "apply_staged",
    "deliver",
    "deploy_staged",
    "list_secrets",
    "machine_secrets",
    "remove_secrets",
    "rotate_key",
    "set_secrets",
    "store_secrets",
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
    key = data_key(session, keyring, app)
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
    if not stage:
        new_version(session, app, actor=actor)
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
    if not stage and wanted:
        new_version(session, app, actor=actor)
    return wanted


def apply_staged(session: Session, app: App, *, actor: str) -> list[str]:
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
    if staged:
        new_version(session, app, actor=actor)
    return sorted(r.name for r in staged)


def _info(row: Secret) -> SecretInfo:
    if not row.staged:
        status = "deployed"
    else:
        status = "staged" if row.ciphertext is not None else "staged-unset"
    return SecretInfo(row.name, row.digest, row.version, status, row.created_by, row.created_at)


def list_secrets(cp: ControlPlane, app_id: str) -> tuple[list[SecretInfo], int | None]:
    """The app's secrets (names, digests and versions, never values) and its
    current secrets version (None if its secrets never changed)."""
    with cp.db.read() as session:
        rows = session.execute(
            select(Secret).where(Secret.app_id == app_id).order_by(Secret.name, Secret.staged)
        ).scalars()
        return [_info(r) for r in rows], current_version(session, app_id)


def machine_secrets(
    session: Session, keyring: Keyring, machine: Machine
) -> tuple[dict[str, str], dict[str, str]]:
    """The values of the secrets version the machine's release names: (values, digests).

    In memory only. A machine receives its own release's version, never
    merely the newest: a rollback's machines get what the earlier release ran with.
    A one-off made before the app had any release gets the newest version.
    """
    app = session.get(App, machine.app_id)
    if app is None:
        raise NotFound(f"machine {machine.id} has no app")
    release = session.execute(
        select(Release).where(Release.app_id == app.id, Release.version == machine.version)
    ).scalar_one_or_none()
    # A one-off of an app with no release yet gets the newest version.
    version = current_version(session, app.id) if release is None else release.secrets_version
    if version is None:
        return {}, {}
    rows = list(
        session.execute(
            select(SecretVersionValue).where(
                SecretVersionValue.app_id == app.id, SecretVersionValue.version == version
            )
        ).scalars()
    )
    if not rows:
        return {}, {}
    key = data_key(session, keyring, app)
    values: dict[str, str] = {}
    for row in rows:
        ref = SecretRef(app.org_id, app.id, row.name, row.value_version)
        values[row.name] = key.decrypt(ref, row.ciphertext).decode()
    return values, {r.name: r.digest for r in rows}


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
            SECRET_DELIVERIES.labels("delivered").inc()
            return values
    SECRET_DELIVERIES.labels("refused").inc()
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
    raise audited(PermissionDenied(f"machine {machine_id} is not starting on this host"))


@dataclass(frozen=True)
class SecretsChange:
    names: list[str]
    release: int | None  # the release that rolls the change out, if any


@contextmanager
def _app_change(
    cp: ControlPlane, ctx: AuditContext, app: App, action: str, *, rollout: bool, wake: bool = True
) -> Iterator[tuple[Session, App, Event]]:
    """A change to the app's secrets; one that rolls out refuses while a deploy runs."""
    with change(cp, ctx, org_id=app.org_id, action=action, target=app.name, wake=wake) as (
        session,
        event,
    ):
        row = session.get(App, app.id)
        assert row is not None
        if rollout:
            busy_release(session, row.id)
        yield session, row, event


def _rolled_out(
    session: Session, app: App, names: list[str], *, stage: bool, actor: str
) -> int | None:
    """Unless staged, roll a change of ``names`` out as a release of the live app."""
    if stage or not names:
        return None
    release = roll_out(session, app, actor=actor)
    return release.version if release else None


def store_secrets(
    cp: ControlPlane,
    ctx: AuditContext,
    app: App,
    values: Sequence[tuple[str, str]],
    *,
    stage: bool,
) -> SecretsChange:
    """Set ``values`` atomically; unless staged, roll them out to the app's machines."""
    with _app_change(cp, ctx, app, "secrets.set", rollout=not stage) as (session, row, event):
        infos = set_secrets(session, cp.keyring, row, values, stage=stage, actor=ctx.actor)
        names = [i.name for i in infos]
        release = _rolled_out(session, row, names, stage=stage, actor=ctx.actor)
        event.detail = {
            "secrets": {i.name: i.digest for i in infos},
            "staged": stage,
            "release": release,
        }
    return SecretsChange(names, release)


def remove_secrets(
    cp: ControlPlane, ctx: AuditContext, app: App, names: list[str] | None, *, stage: bool
) -> SecretsChange:
    """Remove ``names`` (every secret with None); unless staged, roll it out."""
    with _app_change(cp, ctx, app, "secrets.unset", rollout=not stage) as (session, row, event):
        removed = unset_secrets(session, row, names, stage=stage, actor=ctx.actor)
        release = _rolled_out(session, row, removed, stage=stage, actor=ctx.actor)
        event.detail = {"names": removed, "staged": stage}
    return SecretsChange(removed, release)


def deploy_staged(cp: ControlPlane, ctx: AuditContext, app: App) -> SecretsChange:
    """Make staged changes the deployed values and roll them out."""
    with _app_change(cp, ctx, app, "secrets.deploy", rollout=True) as (session, row, event):
        names = apply_staged(session, row, actor=ctx.actor)
        release = _rolled_out(session, row, names, stage=False, actor=ctx.actor)
        event.detail = {"names": names, "release": release}
    return SecretsChange(names, release)


def rotate_key(cp: ControlPlane, ctx: AuditContext, app: App) -> tuple[int, int]:
    """A new data key for the app, every value re-encrypted: (key version, values re-encrypted)."""
    action = "secrets.rotate_key"
    with _app_change(cp, ctx, app, action, rollout=False, wake=False) as (session, row, event):
        version, count = rotate_data_key(session, cp.keyring, row)
        event.detail = {"key_version": version, "reencrypted": count}
    return version, count
