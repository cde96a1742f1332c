"""``hangar server init``: a new installation's keys, CA, database and first admin."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from hangar.audit.log import AuditContext
from hangar.auth.rbac import Role
from hangar.auth.tokens import new_id
from hangar.config.settings import ServerSettings
from hangar.crypto.ca import InternalCA
from hangar.crypto.keyring import (
    FileKekProvider,
    Keyring,
    Pkcs11KekProvider,
    generate_kek_file,
)
from hangar.crypto.signing import AuditSigner
from hangar.domain.names import validate_dns_label, validate_email
from hangar.errors import ConfigError
from hangar.hostfs import write_private
from hangar.store.db import Database
from hangar.store.tables import Membership, Org, Setting, User

__all__ = ["InitResult", "init_server"]

KEY_FILES = (
    "kek.key",
    "ca.crt",
    "ca.key.wrapped",
    "api.crt",
    "api.key",
    "audit-signing.key.wrapped",
    "audit-signing.pub",
    "hangar.db",
    "hangar.db-wal",
    "hangar.db-shm",
)


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    org: str
    admin_email: str
    token: str
    token_id: str
    ca_cert: Path
    kek_file: Path | None  # None when the KEK is not in a file (environment, PKCS#11)


def write_api_certificate(settings: ServerSettings, ca: InternalCA) -> None:
    cert, key = ca.issue_server_cert(settings.tls_hostnames)
    write_private(settings.data_dir / "api.key", key)
    (settings.data_dir / "api.crt").write_bytes(cert)


def init_server(
    settings: ServerSettings,
    *,
    org_name: str,
    admin_email: str,
    token_ttl: dt.timedelta | None,
    force: bool = False,
) -> InitResult:
    """Create everything a new installation needs; refuses to overwrite one."""
    from hangar.controlplane.state import (  # state imports ours
        BREAK_GLASS_SETTING,
        ControlPlane,
        kek_provider,
    )

    validate_dns_label(org_name, what="organization name")
    admin_email = validate_email(admin_email)
    data_dir = settings.data_dir
    existing = [name for name in KEY_FILES if (data_dir / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{data_dir} already holds a Hangar installation ({', '.join(existing)})",
            hint="use another --data-dir, or --force to destroy it and start over",
        )
    if settings.database_url:
        probe = Database(settings.database_url)
        probe.migrate()
        with probe.read() as session:
            orgs = session.execute(select(func.count()).select_from(Org)).scalar_one()
        probe.dispose()
        if orgs:
            raise ConfigError(
                "the database already holds an installation",
                hint="initialise with an empty database",
            )
    for name in existing:
        (data_dir / name).unlink()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)

    kek_file = settings.effective_kek_file
    provider = kek_provider(settings)
    if isinstance(provider, FileKekProvider):
        if kek_file.exists() and force:
            kek_file.unlink()
        generate_kek_file(kek_file)
    elif isinstance(provider, Pkcs11KekProvider):
        provider.create()  # the first KEK, made inside the token
    try:
        keyring = Keyring(provider)
        ca = InternalCA.create("Hangar")
        ca.save(data_dir, keyring)
        write_api_certificate(settings, ca)
        AuditSigner.create().save(data_dir, keyring)
        cp = ControlPlane.open(settings)
        now = dt.datetime.now(dt.UTC)
        with cp.db.write() as session:
            org = Org(id=new_id("org"), name=org_name, created_at=now)
            user = User(id=new_id("usr"), email=admin_email, is_operator=True, created_at=now)
            session.add_all([org, user])
            session.flush()
            session.add(
                Membership(org_id=org.id, user_id=user.id, role=Role.ADMIN.value, created_at=now)
            )
            row, token = cp.tokens.mint(
                session,
                user_id=user.id,
                kind="user",
                org_id=None,
                ttl=token_ttl,
                name="bootstrap admin token",
            )
            session.add(Setting(key=BREAK_GLASS_SETTING, value=row.id))
            ctx = AuditContext(actor=admin_email, token_id=None, request_id=None, client_addr=None)
            cp.audit.record(session, ctx, org_id=None, action="server.init", target=str(data_dir))
            cp.audit.record(session, ctx, org_id=org.id, action="org.create", target=org_name)
            cp.audit.record(
                session,
                ctx,
                org_id=None,
                action="token.create",
                target=row.id,
                detail={"kind": "user", "name": row.name},
            )
        cp.close()
    except BaseException:
        # A half-made installation is worse than none: remove what we wrote.
        for name in KEY_FILES:
            (data_dir / name).unlink(missing_ok=True)
        if isinstance(provider, FileKekProvider):
            kek_file.unlink(missing_ok=True)
        raise
    return InitResult(
        data_dir=data_dir,
        org=org_name,
        admin_email=admin_email,
        token=token,
        token_id=row.id,
        ca_cert=data_dir / "ca.crt",
        kek_file=kek_file if isinstance(provider, FileKekProvider) else None,
    )
