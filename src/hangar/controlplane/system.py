"""The installation itself: rotating the key-encryption key, and client certificates for
metrics scrapers; audited."""

from __future__ import annotations

import datetime as dt
import re

from hangar.audit.log import AuditContext
from hangar.controlplane.changes import change
from hangar.controlplane.keys import Rotation, rotate_kek
from hangar.controlplane.state import ControlPlane
from hangar.crypto.peercert import IssuedCert
from hangar.errors import ValidationError

__all__ = ["MAX_SCRAPER_DAYS", "issue_scraper_cert", "rotate_keys"]

MAX_SCRAPER_DAYS = 397  # a scraper's certificate cannot be revoked: it expires instead
_SCRAPER = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def rotate_keys(cp: ControlPlane, ctx: AuditContext) -> Rotation:
    """A new KEK, every wrapped key re-wrapped under it, the old one retired; then recorded.

    The rotation commits in steps of its own, so its event is written once
    it has finished.
    """
    done = rotate_kek(cp)
    detail = {"retired": done.retired, "rewrapped": done.rewrapped}
    with change(
        cp, ctx, org_id=None, action="kek.rotate", target=done.kek_id, detail=detail, wake=False
    ):
        pass
    return done


def issue_scraper_cert(
    cp: ControlPlane, ctx: AuditContext, name: str, csr_pem: str, days: int
) -> IssuedCert:
    """A client certificate for metrics scraper ``name`` (a Prometheus on another host), for
    the metrics listener over mutual TLS; recorded with its serial and expiry.

    Only the CSR's public key is used; the name, usage and lifetime come from here.
    """
    if not _SCRAPER.fullmatch(name):
        raise ValidationError(
            f"{name!r} is not a scraper name", hint="lowercase letters, digits and '-'"
        )
    if not 1 <= days <= MAX_SCRAPER_DAYS:
        raise ValidationError(f"a scraper's certificate lasts 1 to {MAX_SCRAPER_DAYS} days")
    cert = cp.ca.issue_scraper_cert(csr_pem.encode(), name, lifetime=dt.timedelta(days=days))
    issued = IssuedCert(cert)
    detail = {"serial": issued.serial, "expires_at": issued.expires_at.isoformat()}
    with change(
        cp, ctx, org_id=None, action="metrics.cert", target=name, detail=detail, wake=False
    ):
        pass
    return issued
