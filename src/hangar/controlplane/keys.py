"""KEK rotation, online: a new KEK first, everything re-wrapped, the old one retired.

Crash-safe in the order it works: while both KEKs are in the provider,
everything unwraps; the key files are replaced atomically one by one; the
store's wrapped keys change in one transaction; only then is the old KEK
retired. Running it again after a crash finishes the job.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# Every column that holds a blob wrapped by the KEK: its table, its attribute,
# and the purpose the blob was wrapped under (bound to its row).
_WRAPPED_COLUMNS: tuple[tuple[type[Any], str, Callable[[Any], str]], ...] = (
    (RootKey, "wrapped", lambda r: root_key_purpose(r.id)),
    (AppKey, "wrapped", lambda r: app_key_purpose(r.app_id, r.version)),
    (Certificate, "key_wrapped", lambda r: cert_key_purpose(r.id)),
    (Volume, "key_wrapped", lambda r: volume_key_purpose(r.id)),
    (LogSinkRow, "credential", lambda r: credential_purpose(r.org_id, r.id)),
    (BackupRepoRow, "password", lambda r: backup_password_purpose(r.org_id)),
    (BackupRepoRow, "credential", lambda r: backup_credential_purpose(r.org_id)),
    (UserFactor, "secret_wrapped", lambda r: totp_purpose(r.id)),
    (IdentityProvider, "client_secret", lambda r: idp_secret_purpose(r.id)),
    (UserIdentity, "refresh_token", lambda r: refresh_purpose(r.idp_id, r.subject)),
)


def _rewrap_rows(cp: ControlPlane) -> int:
    count = 0
    with cp.db.write() as session:
        for model, attribute, purpose in _WRAPPED_COLUMNS:
            for row in session.execute(select(model)).scalars():
                blob = getattr(row, attribute)
                if blob is None:
                    continue
                fresh = rewrap(cp.keyring, blob, purpose(row))
                count += fresh != blob
                setattr(row, attribute, fresh)
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
