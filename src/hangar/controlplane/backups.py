"""Organizations' restic repositories: where their backups go, and what is in them.

An organization names one repository (``hangar backups repo set``): a REST
server (``rest:https://…``), an S3 bucket (``s3:https://…/bucket``) or, where
the operator allows it, a directory on the server's disks under
``backup_local_root/ORG_ID/``. The control plane calls the repository on the
organization's behalf, so its host must resolve to public addresses unless
the operator allows it by name (``allowed_backup_hosts``), as for log sinks;
SFTP is refused, since it would sign in with the server's own SSH keys.

restic's password is generated here, once per organization, and kept only
wrapped by the KEK, as is the backend's credential (S3 keys, a REST
server's password), which the person gives on stdin and never sees again.
Both are unwrapped in memory for one restic command at a time and reach it
through its environment (``backups.restic``).

Work against a repository holds an API thread while restic runs: one such
operation per organization at a time (``OrgSlots``), each bounded by a
timeout, never on the server's loops.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hangar.audit.log import AuditContext
from hangar.backups.restic import CheckResult, Repository, Restic, Retention, Snapshot
from hangar.controlplane.changes import change
from hangar.controlplane.orgslots import OrgSlots
from hangar.controlplane.state import ControlPlane
from hangar.errors import NotFound, ValidationError
from hangar.images.registry import internal_addresses
from hangar.store.tables import BackupRepoRow, Org

__all__ = [
    "DEFAULT_EVERY_HOURS",
    "RepoCredential",
    "RepoOut",
    "check_repo",
    "credential_purpose",
    "get_repo",
    "list_backups",
    "open_repo",
    "password_purpose",
    "repo_location",
    "set_repo",
]

DEFAULT_EVERY_HOURS = 24
MAX_SECRET = 1024
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SLOTS = OrgSlots(1, "backup operations")


def password_purpose(org_id: str) -> str:
    return f"backup-repo-password:{org_id}"


def credential_purpose(org_id: str) -> str:
    return f"backup-repo-credential:{org_id}"


@dataclass(frozen=True)
class RepoCredential:
    """A backend's credential: ``basic`` (a REST server's user and password) or
    ``s3`` (an access key id and secret, and the bucket's region)."""

    kind: str
    user: str
    secret: str
    region: str = ""

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> RepoCredential:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class RepoOut:
    location: str
    kind: str
    auth: str | None  # the credential's kind, never the credential
    retention: Retention
    every_hours: int
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_run_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_outcome: str | None


def _out(row: BackupRepoRow) -> RepoOut:
    return RepoOut(
        location=row.location,
        kind=row.kind,
        auth=row.auth,
        retention=Retention(row.keep_daily, row.keep_weekly, row.keep_monthly),
        every_hours=row.every_hours,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_run_at=row.last_run_at,
        last_success_at=row.last_success_at,
        last_outcome=row.last_outcome,
    )


def _printable(value: str, what: str) -> None:
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise ValidationError(f"the {what} is printable ASCII without spaces")


def repo_location(
    url: str, org_id: str, *, allowed: list[str], local_root: Path | None
) -> tuple[str, str]:
    """(kind, restic location) for ``url`` as an organization gives it; ValidationError
    unless the control plane may use it on the organization's behalf."""
    if len(url) > 1000:
        raise ValidationError("a repository URL is at most 1000 characters")
    _printable(url, "repository URL")
    scheme, sep, rest = url.partition(":")
    if not sep:
        return "local", _local(url, org_id, local_root)
    if scheme in ("http", "https"):
        raise ValidationError(
            f"say which kind of repository {url!r} is",
            hint=f"rest:{url} for a REST server, s3:{url} for S3",
        )
    if scheme == "sftp":
        raise ValidationError(
            "Hangar does not use SFTP repositories for organizations: it would sign in"
            " with the server's own SSH keys",
            hint="use a REST server (rest:https://…) or S3 (s3:https://…/bucket)",
        )
    if scheme not in ("rest", "s3"):
        raise ValidationError(
            f"unsupported repository kind {scheme!r}",
            hint="rest:https://host/path, s3:https://host/bucket, or a name under the"
            " server's backup_local_root",
        )
    target = rest if "://" in rest else f"https://{rest}"
    try:
        parts = urlsplit(target)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValidationError(f"repository URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"repository URL {url!r} names no http(s) host")
    if parts.username or parts.password:
        raise ValidationError(
            "a repository URL cannot carry credentials: they would be shown",
            hint="give them with --user (REST) or --s3 (S3); they are read from stdin",
        )
    if parts.query or parts.fragment:
        raise ValidationError("a repository URL has no query or fragment")
    if scheme == "s3" and not parts.path.strip("/"):
        raise ValidationError("an s3 repository names its bucket: s3:https://host/bucket")
    host = parts.hostname
    if host not in allowed and parts.netloc not in allowed:
        unreachable = ValidationError(
            f"repository host {host} unreachable",
            hint="a repository on a private or local address must be allowed by name in"
            " the server's allowed_backup_hosts setting",
        )
        try:
            refused = internal_addresses(host, port)
        except OSError as exc:
            raise unreachable from exc
        if refused:
            raise unreachable
    return scheme, f"{scheme}:{target}"


def _local(name: str, org_id: str, root: Path | None) -> str:
    if root is None:
        raise ValidationError(
            "this server keeps no organization's repository on its own disks",
            hint="use rest:https://… or s3:https://…/bucket, or ask the operator to set"
            " backup_local_root",
        )
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"{name!r} is not a repository name under the server's backup_local_root",
            hint="a local repository is a short name (letters, digits, '.', '_', '-');"
            " Hangar keeps it under the organization's own directory",
        )
    return str(root / org_id / name)


def _check_credential(kind: str, credential: RepoCredential | None) -> None:
    if credential is None:
        if kind == "s3":
            raise ValidationError(
                "an s3 repository needs an access key",
                hint="hangar backups repo set s3:https://host/bucket --s3 (key id and secret"
                " on stdin)",
            )
        return
    wanted = {"rest": "basic", "s3": "s3"}.get(kind)
    if credential.kind != wanted:
        raise ValidationError(f"a {kind} repository takes no {credential.kind} credential")
    for what, value in (("user", credential.user), ("secret", credential.secret)):
        if not value or len(value) > MAX_SECRET:
            raise ValidationError(f"the credential's {what} is empty or too long")
        _printable(value, f"credential's {what}")
    if credential.region and not re.fullmatch(r"[a-z0-9-]{1,32}", credential.region):
        raise ValidationError(f"{credential.region!r} is not a region")


def _repository(location: str, password: str, credential: RepoCredential | None) -> Repository:
    if credential is None:
        return Repository(location, password)
    if credential.kind == "basic":
        return Repository(
            location, password, rest_user=credential.user, rest_password=credential.secret
        )
    return Repository(
        location,
        password,
        s3_key_id=credential.user,
        s3_secret=credential.secret,
        s3_region=credential.region or "us-east-1",
    )


def set_repo(
    cp: ControlPlane,
    ctx: AuditContext,
    org: Org,
    url: str,
    *,
    credential: RepoCredential | None = None,
    retention: Retention | None = None,
    every_hours: int | None = None,
) -> RepoOut:
    """Point the organization's backups at ``url``: opened (or created) with the
    organization's restic password before anything is stored."""
    kind, location = repo_location(
        url,
        org.id,
        allowed=cp.settings.allowed_backup_hosts,
        local_root=cp.settings.backup_local_root,
    )
    _check_credential(kind, credential)
    if every_hours is not None and not 1 <= every_hours <= 168:
        raise ValidationError("backups run every 1 to 168 hours")
    with cp.db.read() as session:
        row = session.get(BackupRepoRow, org.id)
        wrapped = row.password if row is not None else None
    # The organization keeps one restic password: pointing at a new place (or the
    # same place with new keys) opens what it already made there.
    if wrapped is None:
        password = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        wrapped = cp.keyring.wrap(password.encode(), purpose=password_purpose(org.id))
    else:
        password = cp.keyring.unwrap(wrapped, purpose=password_purpose(org.id)).decode()
    if kind == "local":
        Path(location).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _SLOTS.hold(org.id):
        created = Restic(_repository(location, password, credential), timeout=300).ensure()
    sealed = (
        cp.keyring.wrap(credential.dumps(), purpose=credential_purpose(org.id))
        if credential is not None
        else None
    )
    now = dt.datetime.now(dt.UTC)
    with change(cp, ctx, org_id=org.id, action="backups.repo.set", target=org.id, wake=False) as (
        session,
        event,
    ):
        row = session.get(BackupRepoRow, org.id)
        if row is None:
            keep = retention or Retention()
            row = BackupRepoRow(
                org_id=org.id,
                password=wrapped,
                keep_daily=keep.daily,
                keep_weekly=keep.weekly,
                keep_monthly=keep.monthly,
                every_hours=every_hours or DEFAULT_EVERY_HOURS,
                created_by=ctx.actor,
                created_at=now,
            )
            session.add(row)
        elif retention is not None:
            row.keep_daily, row.keep_weekly, row.keep_monthly = (
                retention.daily,
                retention.weekly,
                retention.monthly,
            )
        if every_hours is not None:
            row.every_hours = every_hours
        row.location, row.kind, row.updated_at = location, kind, now
        row.credential = sealed
        row.auth = credential.kind if credential is not None else None
        event.detail = {
            "location": location,
            "created": created,
            "auth": row.auth,
            "keep": [row.keep_daily, row.keep_weekly, row.keep_monthly],
            "every_hours": row.every_hours,
        }
        out = _out(row)
    return out


def get_repo(cp: ControlPlane, org: Org) -> RepoOut:
    with cp.db.read() as session:
        row = session.get(BackupRepoRow, org.id)
        if row is None:
            raise _no_repo()
        return _out(row)


def _no_repo() -> NotFound:
    return NotFound(
        "this organization has no backup repository",
        hint="hangar backups repo set rest:https://host/path (or s3:https://host/bucket --s3)",
    )


def open_repo(cp: ControlPlane, org_id: str) -> Restic:
    """The organization's repository, its secrets unwrapped in memory for this use."""
    with cp.db.read() as session:
        row = session.get(BackupRepoRow, org_id)
        if row is None:
            raise _no_repo()
        location, wrapped, sealed = row.location, row.password, row.credential
    password = cp.keyring.unwrap(wrapped, purpose=password_purpose(org_id)).decode()
    credential = (
        RepoCredential.loads(cp.keyring.unwrap(sealed, purpose=credential_purpose(org_id)))
        if sealed is not None
        else None
    )
    return Restic(_repository(location, password, credential))


def list_backups(cp: ControlPlane, org: Org) -> list[Snapshot]:
    restic = open_repo(cp, org.id)
    with _SLOTS.hold(org.id):
        return restic.snapshots()


def check_repo(
    cp: ControlPlane, ctx: AuditContext, org: Org, *, read_data_subset: str = ""
) -> CheckResult:
    """``restic check`` (reading back ``read_data_subset`` of the data); audited with
    its outcome, whatever it is."""
    restic = open_repo(cp, org.id)
    started = time.monotonic()
    with _SLOTS.hold(org.id):
        result = restic.check(read_data_subset=read_data_subset)
    with change(cp, ctx, org_id=org.id, action="backups.check", target=org.id, wake=False) as (
        _,
        event,
    ):
        event.detail = {
            "ok": result.ok,
            "read_data_subset": read_data_subset or None,
            "seconds": round(time.monotonic() - started, 3),
        }
    return result
