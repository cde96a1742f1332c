"""KEK rotation, online: a new KEK first, everything re-wrapped, the old one retired.

Crash-safe in the order it works: while both KEKs are in the provider,
everything unwraps; the key files are replaced atomically one by one; the
store's wrapped keys change in one transaction; only then is the old KEK
retired. Running it again after a crash finishes the job.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from sqlalchemy import select

from hangar.controlplane.acme import ACCOUNT_PURPOSE, ACCOUNT_SETTING
from hangar.controlplane.backups import credential_purpose as backup_credential_purpose
from hangar.controlplane.backups import password_purpose as backup_password_purpose
from hangar.controlplane.factors import totp_purpose
from hangar.controlplane.idps import secret_purpose as idp_secret_purpose
from hangar.controlplane.logsinks import credential_purpose
from hangar.controlplane.routes import cert_key_purpose
from hangar.controlplane.serverbackup import rewrap_repo_file
from hangar.controlplane.signins import refresh_purpose
from hangar.controlplane.state import ControlPlane
from hangar.crypto.rotation import (
    WRAPPED_FILES,
    app_key_purpose,
    rewrap,
    rewrap_file,
    root_key_purpose,
)
from hangar.crypto.volumekeys import volume_key_purpose
from hangar.store.tables import (
    AppKey,
    BackupRepoRow,
    Certificate,
    IdentityProvider,
    LogSinkRow,
    RootKey,
    Setting,
    UserFactor,
    UserIdentity,
    Volume,
)

__all__ = ["Rotation", "rotate_kek"]


@dataclass(frozen=True)
class Rotation:
    kek_id: str
    retired: list[str]
    rewrapped: int


def rotate_kek(cp: ControlPlane) -> Rotation:
    before = set(cp.keyring.kek_ids)
    new_id = cp.keyring.rotate()
    count = 0
    for name, purpose in WRAPPED_FILES.items():
        count += rewrap_file(cp.keyring, cp.data_dir / name, purpose)
    count += rewrap_repo_file(cp.keyring, cp.data_dir)
    # Twice: a key another request wrapped under the old KEK just before the
    # switch, and committed after the first pass read, is caught by the second.
    for _ in range(2):
        count += _rewrap_rows(cp)
    cp.keyring.retire_others()
    return Rotation(kek_id=new_id, retired=sorted(before - {new_id}), rewrapped=count)


def _rewrap_rows(cp: ControlPlane) -> int:
    count = 0
    with cp.db.write() as session:
        for root in session.execute(select(RootKey)).scalars():
            fresh = rewrap(cp.keyring, root.wrapped, root_key_purpose(root.id))
            count += fresh != root.wrapped
            root.wrapped = fresh
        for app_key in session.execute(select(AppKey)).scalars():
            purpose = app_key_purpose(app_key.app_id, app_key.version)
            fresh = rewrap(cp.keyring, app_key.wrapped, purpose)
            count += fresh != app_key.wrapped
            app_key.wrapped = fresh
        for cert in session.execute(select(Certificate)).scalars():
            if cert.key_wrapped is not None:
                fresh = rewrap(cp.keyring, cert.key_wrapped, cert_key_purpose(cert.id))
                count += fresh != cert.key_wrapped
                cert.key_wrapped = fresh
        for volume in session.execute(select(Volume)).scalars():
            if volume.key_wrapped is not None:
                fresh = rewrap(cp.keyring, volume.key_wrapped, volume_key_purpose(volume.id))
                count += fresh != volume.key_wrapped
                volume.key_wrapped = fresh
        for sink in session.execute(select(LogSinkRow)).scalars():
            if sink.credential is not None:
                purpose = credential_purpose(sink.org_id, sink.id)
                fresh = rewrap(cp.keyring, sink.credential, purpose)
                count += fresh != sink.credential
                sink.credential = fresh
        for repo in session.execute(select(BackupRepoRow)).scalars():
            fresh = rewrap(cp.keyring, repo.password, backup_password_purpose(repo.org_id))
            count += fresh != repo.password
            repo.password = fresh
            if repo.credential is not None:
                purpose = backup_credential_purpose(repo.org_id)
                fresh = rewrap(cp.keyring, repo.credential, purpose)
                count += fresh != repo.credential
                repo.credential = fresh
        for factor in session.execute(
            select(UserFactor).where(UserFactor.secret_wrapped.is_not(None))
        ).scalars():
            assert factor.secret_wrapped is not None
            fresh = rewrap(cp.keyring, factor.secret_wrapped, totp_purpose(factor.id))
            count += fresh != factor.secret_wrapped
            factor.secret_wrapped = fresh
        for idp in session.execute(select(IdentityProvider)).scalars():
            if idp.client_secret is not None:
                fresh = rewrap(cp.keyring, idp.client_secret, idp_secret_purpose(idp.id))
                count += fresh != idp.client_secret
                idp.client_secret = fresh
        for identity in session.execute(select(UserIdentity)).scalars():
            if identity.refresh_token is not None:
                purpose = refresh_purpose(identity.idp_id, identity.subject)
                fresh = rewrap(cp.keyring, identity.refresh_token, purpose)
                count += fresh != identity.refresh_token
                identity.refresh_token = fresh
        account = session.get(Setting, ACCOUNT_SETTING)
        if account is not None:
            stored = json.loads(account.value)
            blob = base64.b64decode(stored["key"])
            fresh = rewrap(cp.keyring, blob, ACCOUNT_PURPOSE)
            if fresh != blob:
                count += 1
                stored["key"] = base64.b64encode(fresh).decode()
                account.value = json.dumps(stored)
    return count
