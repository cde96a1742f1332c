"""The control plane's own backup: the store and the key files, into a restic repository.

``hangar server backup`` copies, into a 0700 staging directory inside the
data directory, a consistent copy of the store (SQLite's online backup API,
the same as ``sqlite3 .backup``; or ``pg_dump``), the files a restore needs
(``STORE_FILES``) and a manifest with their SHA-256 and the id of the KEK
that wraps them; then backs that directory up with restic, applies the
retention (``forget --prune``) and records the success (a system audit
event, and the time the "no backup for 26 hours" alert reads).

``kek.key`` is never in the repository: the repository's restic password is
wrapped by it (``backup-repo.json`` in the data directory), so a backup
opens only with a KEK kept apart. After ``rotate-kek`` the repository's
password is re-wrapped, and the backups taken before it hold key files
wrapped by the old KEK: restoring one needs that older ``kek.key``.

``restore`` refuses a directory that already holds an installation,
verifies every file against the manifest, proves the KEK unwraps the
restored keys before anything is moved into place, then puts the store
back and records the restore on the system chain.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

import hangar
from hangar import hostcmd
from hangar.audit.log import AuditContext
from hangar.backups.restic import Progress, Repository, Restic, Retention, Snapshot
from hangar.config.settings import ServerSettings
from hangar.controlplane.backups import RepoCredential
from hangar.controlplane.changes import change
from hangar.controlplane.state import ControlPlane, kek_provider
from hangar.crypto.ca import InternalCA
from hangar.crypto.keyring import Keyring
from hangar.crypto.signing import AuditSigner
from hangar.errors import (
    ConfigError,
    HangarError,
    IntegrityError,
    KeyMaterialError,
    ValidationError,
)
from hangar.hostfs import write_private
from hangar.store.tables import Setting

__all__ = [
    "REPO_FILE",
    "STORE_FILES",
    "BackupResult",
    "RestoreResult",
    "configure",
    "list_server_backups",
    "rewrap_repo_file",
    "server_backup",
    "server_restore",
]

REPO_FILE = "backup-repo.json"
# Every file of the data directory a restore needs besides the store.
# kek.key (or the HSM) is kept apart: it opens the repository itself.
STORE_FILES = (
    "ca.crt",
    "ca.key.wrapped",
    "audit-signing.key.wrapped",
    "audit-signing.pub",
    "api.crt",
    "api.key",
)
OPTIONAL_FILES = ("server.toml",)
TAG = "hangar-server"
LAST_BACKUP_SETTING = "server_backup"
SERVER_RETENTION = Retention(daily=7, weekly=4, monthly=12)
_PASSWORD_PURPOSE = "server-backup-password"  # noqa: S105 - a purpose, not a password
_CREDENTIAL_PURPOSE = "server-backup-credential"
_SQLITE_NAME = "hangar.db"
_PG_NAME = "hangar.pgdump"
OPERATOR = AuditContext(actor="operator", token_id=None, request_id=None, client_addr=None)


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str
    files: list[str]
    bytes_processed: int
    bytes_added: int
    seconds: float
    kek_id: str
    database: str
    forgotten: int


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    files: list[str]
    kek_id: str
    database: str
    created_at: str


def _b64(blob: bytes | None) -> str | None:
    return base64.b64encode(blob).decode() if blob is not None else None


def _unb64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text else None


def _check_location(url: str) -> str:
    if len(url) > 1000 or any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise ValidationError("a repository URL is printable ASCII without spaces, at most 1000")
    scheme, sep, rest = url.partition(":")
    if url.startswith("/"):
        return url
    if scheme not in ("rest", "s3", "sftp") or not sep:
        raise ValidationError(
            f"unsupported repository {url!r}",
            hint="rest:https://host/path, s3:https://host/bucket, sftp:user@host:/path or an"
            " absolute path",
        )
    if "@" in rest and scheme != "sftp":
        raise ValidationError(
            "a repository URL cannot carry credentials: they would be shown",
            hint="give them with --user (REST) or --s3 (S3); they are read from stdin",
        )
    return url


def configure(
    settings: ServerSettings,
    url: str,
    *,
    credential: RepoCredential | None = None,
    retention: Retention | None = None,
) -> tuple[str, bool]:
    """Point the server's backups at ``url`` (created if empty); (location, created).

    The restic password is generated once and kept, wrapped by the KEK, in
    ``DATA_DIR/backup-repo.json`` with the backend's credential.
    """
    location = _check_location(url)
    keyring = Keyring(kek_provider(settings))
    path = settings.data_dir / REPO_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    wrapped = _unb64(old.get("password"))
    if wrapped is None:
        password = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        wrapped = keyring.wrap(password.encode(), purpose=_PASSWORD_PURPOSE)
    else:
        password = keyring.unwrap(wrapped, purpose=_PASSWORD_PURPOSE).decode()
    if location.startswith("/"):
        Path(location).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = Restic(_repository(location, password, credential), timeout=300).ensure()
    keep = retention or (Retention(**old["keep"]) if "keep" in old else SERVER_RETENTION)
    sealed = (
        keyring.wrap(credential.dumps(), purpose=_CREDENTIAL_PURPOSE)
        if credential is not None
        else None
    )
    data = {
        "version": 1,
        "location": location,
        "password": _b64(wrapped),
        "credential": _b64(sealed),
        "auth": credential.kind if credential is not None else None,
        "keep": {
            "daily": keep.daily,
            "weekly": keep.weekly,
            "monthly": keep.monthly,
            "last": keep.last,
        },
    }
    write_private(path, json.dumps(data, indent=2) + "\n", atomic=True)
    return location, created


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


def _open(config: Path, keyring: Keyring) -> tuple[Restic, Retention]:
    if not config.exists():
        raise ConfigError(
            f"no backup repository is configured ({config} is missing)",
            hint="hangar server backup-repo URL --data-dir DIR",
        )
    data = json.loads(config.read_text())
    wrapped = _unb64(data["password"])
    assert wrapped is not None
    try:
        password = keyring.unwrap(wrapped, purpose=_PASSWORD_PURPOSE).decode()
    except KeyMaterialError as exc:
        raise KeyMaterialError(
            f"{config.name}: {exc.message}",
            hint="use the kek.key of the time this backup-repo.json was written"
            " (before a later rotate-kek)",
        ) from None
    sealed = _unb64(data.get("credential"))
    credential = (
        RepoCredential.loads(keyring.unwrap(sealed, purpose=_CREDENTIAL_PURPOSE))
        if sealed is not None
        else None
    )
    return Restic(_repository(data["location"], password, credential)), Retention(**data["keep"])


def rewrap_repo_file(keyring: Keyring, data_dir: Path) -> int:
    """Re-wrap ``backup-repo.json``'s password and credential under the current KEK
    (for rotation); how many changed."""
    from hangar.crypto.rotation import rewrap

    path = data_dir / REPO_FILE
    if not path.exists():
        return 0
    data = json.loads(path.read_text())
    count = 0
    for key, purpose in (("password", _PASSWORD_PURPOSE), ("credential", _CREDENTIAL_PURPOSE)):
        blob = _unb64(data.get(key))
        if blob is None:
            continue
        fresh = rewrap(keyring, blob, purpose)
        if fresh != blob:
            data[key] = _b64(fresh)
            count += 1
    if count:
        write_private(path, json.dumps(data, indent=2) + "\n", atomic=True)
    return count


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dump_store(settings: ServerSettings, staging: Path) -> tuple[str, str]:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        source = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True)
        target = sqlite3.connect(staging / _SQLITE_NAME)
        try:
            # SQLite's online backup: a consistent copy while the server writes.
            source.backup(target)
        finally:
            target.close()
            source.close()
        (staging / _SQLITE_NAME).chmod(0o600)
        return "sqlite", _SQLITE_NAME
    env, uri = _libpq(settings.effective_database_url)
    hostcmd.run(
        ["pg_dump", "--format=custom", "--no-owner", "--file", str(staging / _PG_NAME), uri],
        env=env,
        timeout=3600,
    )
    return "postgresql", _PG_NAME


def _libpq(database_url: str) -> tuple[dict[str, str], str]:
    """A libpq URI without the password (it goes in PGPASSWORD, never argv)."""
    import os

    url = make_url(database_url)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    bare = url.set(drivername="postgresql", password=None)
    return env, bare.render_as_string(hide_password=False)


def server_backup(
    cp: ControlPlane, *, progress: Callable[[Progress], None] | None = None
) -> BackupResult:
    """Back up the store and the key files into the server's repository (see the module)."""
    settings = cp.settings
    restic, retention = _open(settings.data_dir / REPO_FILE, cp.keyring)
    staging = settings.data_dir / f".backup-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    started = time.monotonic()
    try:
        database, store_name = _dump_store(settings, staging)
        files: dict[str, str] = {store_name: _sha256(staging / store_name)}
        for name in (*STORE_FILES, *OPTIONAL_FILES):
            source = settings.data_dir / name
            if not source.exists():
                if name in STORE_FILES:
                    raise ConfigError(f"{source} is missing: the data directory is incomplete")
                continue
            shutil.copy2(source, staging / name)
            files[name] = _sha256(staging / name)
        wrapped_ca = (staging / "ca.key.wrapped").read_bytes()
        kek_id = wrapped_ca[1:9].hex()
        manifest = {
            "version": 1,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "hangar": hangar.__version__,
            "database": database,
            "kek_id": kek_id,
            "files": files,
        }
        write_private(staging / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        host = settings.host_name or socket.gethostname()
        summary = restic.backup(staging, tags=[TAG], host=host, progress=progress)
        forgotten = restic.forget(retention, tags=[TAG])
    except HangarError as exc:
        _record_failure(cp, exc)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = BackupResult(
        snapshot_id=summary.snapshot_id,
        files=sorted(files),
        bytes_processed=summary.bytes_processed,
        bytes_added=summary.bytes_added,
        seconds=round(time.monotonic() - started, 3),
        kek_id=kek_id,
        database=database,
        forgotten=len(forgotten),
    )
    now = dt.datetime.now(dt.UTC)
    with change(
        cp, OPERATOR, org_id=None, action="server.backup", target=result.snapshot_id, wake=False
    ) as (session, event):
        event.detail = {
            "location": restic.repo.location,
            "files": result.files,
            "bytes": result.bytes_processed,
            "added": result.bytes_added,
            "seconds": result.seconds,
            "kek_id": kek_id,
            "forgotten": result.forgotten,
        }
        value = json.dumps({"last_success_at": now.isoformat(), "snapshot": result.snapshot_id})
        row = session.get(Setting, LAST_BACKUP_SETTING)
        if row is None:
            session.add(Setting(key=LAST_BACKUP_SETTING, value=value))
        else:
            row.value = value
    return result


def _record_failure(cp: ControlPlane, exc: HangarError) -> None:
    with cp.db.write() as session:
        cp.audit.record(
            session,
            OPERATOR,
            org_id=None,
            action="server.backup",
            target="-",
            outcome="failure",
            detail={"error": exc.message[-500:]},
        )


def last_server_backup(cp: ControlPlane) -> dt.datetime | None:
    with cp.db.read() as session:
        row = session.get(Setting, LAST_BACKUP_SETTING)
        if row is None:
            return None
        return dt.datetime.fromisoformat(json.loads(row.value)["last_success_at"])


def list_server_backups(settings: ServerSettings, config: Path | None = None) -> list[Snapshot]:
    keyring = Keyring(kek_provider(settings))
    restic, _ = _open(config or settings.data_dir / REPO_FILE, keyring)
    return restic.snapshots(tags=[TAG])


def server_restore(
    settings: ServerSettings, config: Path, *, snapshot: str = "latest"
) -> RestoreResult:
    """Restore a server backup into ``settings.data_dir`` (empty, or new).

    The KEK the settings name must be the one that wrapped the backup's key
    files: a backup from before a ``rotate-kek`` needs the KEK of its time.
    """
    data_dir = settings.data_dir
    for name in ("ca.crt", _SQLITE_NAME, "ca.key.wrapped"):
        if (data_dir / name).exists():
            raise ConfigError(
                f"{data_dir} already holds an installation ({name})",
                hint="restore into a new, empty data directory",
            )
    keyring = Keyring(kek_provider(settings))
    restic, _ = _open(config, keyring)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = data_dir / f".restore-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        restic.restore(snapshot, staging)
        manifest_path = staging / "manifest.json"
        if not manifest_path.exists():
            raise IntegrityError(f"backup {snapshot} holds no manifest: not a server backup")
        manifest = json.loads(manifest_path.read_text())
        for name, digest in manifest["files"].items():
            if "/" in name or name.startswith("."):
                raise IntegrityError(f"the manifest names {name!r}: not a file of a data directory")
            if not (staging / name).is_file() or _sha256(staging / name) != digest:
                raise IntegrityError(f"{name} in backup {snapshot} does not match its manifest")
        try:
            AuditSigner.load(staging, keyring)
            InternalCA.load(staging, keyring)
        except KeyMaterialError as exc:
            raise KeyMaterialError(
                f"this backup's keys were wrapped by KEK {manifest['kek_id']}, which is not the"
                f" KEK given ({keyring.kek_id}): {exc.message}",
                hint="a backup from before a rotate-kek needs the kek.key of its time: pass"
                " that one with --kek-file",
            ) from None
        database = manifest["database"]
        url = make_url(settings.effective_database_url)
        if (url.get_backend_name() == "sqlite") != (database == "sqlite"):
            raise ConfigError(
                f"this backup holds a {database} store; the settings name {url.get_backend_name()}",
                hint="restore a SQLite backup without --database-url, a PostgreSQL one into an"
                " empty database named by --database-url",
            )
        if database == "postgresql":
            env, uri = _libpq(settings.effective_database_url)
            hostcmd.run(
                [
                    "pg_restore",
                    "--no-owner",
                    "--exit-on-error",
                    "--dbname",
                    uri,
                    str(staging / _PG_NAME),
                ],
                env=env,
                timeout=3600,
            )
        for name in manifest["files"]:
            if name == _PG_NAME:
                continue
            (staging / name).replace(data_dir / name)
        if not (data_dir / REPO_FILE).exists():
            shutil.copy2(config, data_dir / REPO_FILE)
        known = restic.snapshots(tags=[TAG])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if snapshot == "latest" and known:
        restored_id = known[0].id
    else:
        restored_id = next((s.id for s in known if s.id.startswith(snapshot)), snapshot)
    cp = ControlPlane.open(settings)
    try:
        with change(
            cp, OPERATOR, org_id=None, action="server.restore", target=restored_id[:64], wake=False
        ) as (_, event):
            event.detail = {
                "backup_created_at": manifest["created_at"],
                "kek_id": manifest["kek_id"],
            }
    finally:
        cp.close()
    return RestoreResult(
        snapshot_id=restored_id,
        files=sorted(manifest["files"]),
        kek_id=manifest["kek_id"],
        database=database,
        created_at=manifest["created_at"],
    )
