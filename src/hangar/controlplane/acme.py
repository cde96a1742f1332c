"""The ACME issuer: orders, renews and retries the edge's certificates.

One account per installation, its key wrapped by the KEK and kept in the
settings table with the directory it belongs to. For each certificate due —
new, failed and due for a retry, or two thirds into its lifetime — the
issuer makes a fresh key, orders, publishes the HTTP-01 answers where the
edge forwards challenge requests (``acme_challenges``, served by the API),
waits for validation and stores the chain and the wrapped key. Every step
shows in ``certs show``; failures back off exponentially and are audited;
a renewal that fails leaves the still-valid certificate serving.

It runs on its own thread (an order can take tens of seconds) and is
woken when a host name is added.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any, cast

from acme import challenges, client, messages
from acme import errors as acme_errors
from josepy.jwa import ES256
from josepy.jwk import JWKEC
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hangar.audit.log import AuditContext, AuditLog
from hangar.config.settings import ServerSettings
from hangar.controlplane.background import BackgroundLoop
from hangar.controlplane.certs import holder, renew_at
from hangar.controlplane.routes import cert_key_purpose
from hangar.crypto.certs import account_jwk, csr_pem, info_of, new_key_pem, parse_chain
from hangar.crypto.keyring import Keyring
from hangar.errors import HangarError
from hangar.store.db import Database
from hangar.store.tables import AcmeChallenge, App, Certificate, Setting
from hangar.telemetry.metrics import ACME_ORDERS

__all__ = ["ACCOUNT_PURPOSE", "ACCOUNT_SETTING", "ISSUER", "Issuer"]

log = logging.getLogger("hangar.acme")

ISSUER = AuditContext(actor="acme-issuer", token_id=None, request_id=None, client_addr=None)
ACCOUNT_PURPOSE = "acme-account-key"
ACCOUNT_SETTING = "acme_account"
BACKOFF_BASE = dt.timedelta(minutes=1)
BACKOFF_MAX = dt.timedelta(hours=6)
ORDER_DEADLINE = dt.timedelta(seconds=90)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _unprovable(session: Session, cert: Certificate) -> str | None:
    """Why an HTTP-01 order must not run for this unproven claim, if it must not.

    HTTP-01 through a shared edge proves the name points at this
    installation, not which organization controls it: when another app holds
    the name, or also claims it, only a DNS TXT record can decide.
    """
    held = holder(session, cert.hostname)
    if held is not None and held.id != cert.id:
        return f"{cert.hostname} is already held by another app"
    rivals = session.execute(
        select(func.count())
        .select_from(Certificate)
        .where(Certificate.hostname == cert.hostname, Certificate.id != cert.id)
    ).scalar_one()
    if rivals:
        return (
            f"another app also claims {cert.hostname}: prove control with the TXT record"
            f" `hangar certs show {cert.hostname}` gives, then `hangar certs verify`"
        )
    return None


def _describe(exc: BaseException) -> str:
    """An ACME failure in words a person can act on."""
    if isinstance(exc, messages.Error):
        kind = (exc.typ or "").rsplit(":", 1)[-1]
        words = {
            "rateLimited": "the ACME server's rate limit was hit",
            "unauthorized": "the ACME server refused the request",
            "connection": "the ACME server could not reach this name on port 80",
            "dns": "the name does not resolve",
            "rejectedIdentifier": "the ACME server will not issue for this name",
        }.get(kind, "ACME error")
        return f"{words}: {exc.detail or exc.typ}"
    if isinstance(exc, acme_errors.ValidationError):
        problems = []
        for authzr in exc.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    problems.append(_describe(chall.error))
        return "validation failed: " + ("; ".join(problems) or "no challenge passed")
    if isinstance(exc, acme_errors.TimeoutError):
        return "the order did not complete in time"
    if isinstance(exc, HangarError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


class Issuer(BackgroundLoop):
    """Orders, renews and retries certificates over ACME, one round at a time."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        audit: AuditLog,
        settings: ServerSettings,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.audit = audit
        self.directory_url = settings.acme_directory_url
        self.ca_bundle = settings.acme_ca_bundle
        self.email = settings.acme_email
        self.poll_seconds = settings.acme_poll_seconds
        self.on_change = on_change
        super().__init__("hangar-acme", settings.acme_poll_seconds)
        self._client: client.ClientV2 | None = None
        self._jwk: JWKEC | None = None

    def round(self) -> float | None:
        self.run_once()
        return None

    # one round

    def due(self, now: dt.datetime) -> list[str]:
        """Ids of the certificates whose order, retry or renewal is due."""
        with self.db.read() as session:
            rows = session.execute(
                select(Certificate).where(
                    Certificate.source == "acme",
                    Certificate.next_attempt_at.is_not(None),
                    Certificate.next_attempt_at <= now,
                )
            ).scalars()
            # A valid certificate's next attempt is its renewal time (two thirds
            # of its lifetime), sooner if someone asked for it, later on backoff.
            return [c.id for c in rows if c.status in ("pending", "failed", "valid")]

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Work every due certificate once; returns how many were tried."""
        now = now or _now()
        with self.db.write() as session:
            session.execute(delete(AcmeChallenge).where(AcmeChallenge.expires_at < now))
        due = self.due(now)
        for cert_id in due:
            if self._stop.is_set():
                break
            self.issue(cert_id, now)
        return len(due)

    # the account

    def _account(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        verify: Any = str(self.ca_bundle) if self.ca_bundle else True
        with self.db.write() as session:
            row = session.get(Setting, ACCOUNT_SETTING)
            stored = json.loads(row.value) if row is not None else None
            if stored is None or stored.get("directory") != self.directory_url:
                key_pem = new_key_pem()
                stored = {
                    "directory": self.directory_url,
                    "url": None,
                    "key": base64.b64encode(
                        self.keyring.wrap(key_pem.encode(), purpose=ACCOUNT_PURPOSE)
                    ).decode(),
                }
                if row is None:
                    session.add(Setting(key=ACCOUNT_SETTING, value=json.dumps(stored)))
                else:
                    row.value = json.dumps(stored)
        wrapped = base64.b64decode(stored["key"])
        jwk = account_jwk(self.keyring.unwrap(wrapped, purpose=ACCOUNT_PURPOSE).decode())
        net = client.ClientNetwork(
            jwk, alg=ES256, verify_ssl=cast(bool, verify), user_agent="hangar"
        )
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        if stored["url"]:
            net.account = messages.RegistrationResource(
                uri=stored["url"], body=messages.Registration()
            )
        else:
            registration = messages.NewRegistration.from_data(
                email=self.email or None, terms_of_service_agreed=True
            )
            try:
                regr = acme.new_account(registration)
            except acme_errors.ConflictError as exc:
                regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
                net.account = regr
            stored["url"] = regr.uri
            with self.db.write() as session:
                row = session.get(Setting, ACCOUNT_SETTING)
                assert row is not None
                row.value = json.dumps(stored)
            log.info("ACME account registered at %s", regr.uri)
        self._client, self._jwk = acme, jwk
        return acme

    # one certificate

    def _progress(self, cert_id: str, detail: str, **fields: Any) -> None:
        with self.db.write() as session:
            cert = session.get(Certificate, cert_id)
            if cert is None:
                return
            cert.detail = detail
            for name, value in fields.items():
                setattr(cert, name, value)
            cert.updated_at = _now()

    def issue(self, cert_id: str, now: dt.datetime | None = None) -> bool:
        """Order (or renew) one certificate; True if it was issued."""
        now = now or _now()
        with self.db.read() as session:
            cert = session.get(Certificate, cert_id)
            if cert is None:
                return False
            hostname, renewing = cert.hostname, cert.status == "valid"
            refused = None if cert.proven_at is not None else _unprovable(session, cert)
        if refused is not None:
            self._failed(cert_id, refused, renewing, now)
            return False
        key_pem = new_key_pem()
        tokens: list[str] = []
        try:
            acme = self._account()
            assert self._jwk is not None
            self._progress(cert_id, f"ordering a certificate for {hostname}")
            order = acme.new_order(csr_pem(key_pem, hostname))
            self._progress(cert_id, "order created", order_url=order.uri)
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the server remembers this name was validated recently
                chall = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if chall is None:
                    raise HangarError(f"the ACME server offers no HTTP-01 challenge for {hostname}")
                response, validation = chall.response_and_validation(self._jwk)
                token = chall.chall.encode("token")
                with self.db.write() as session:
                    session.merge(
                        AcmeChallenge(
                            token=token,
                            hostname=hostname,
                            key_authorization=validation,
                            expires_at=_now() + dt.timedelta(hours=1),
                        )
                    )
                tokens.append(token)
                acme.answer_challenge(chall, response)
            self._progress(
                cert_id, f"waiting for the ACME server to validate http-01 for {hostname}"
            )
            final = acme.poll_and_finalize(order, deadline=dt.datetime.now() + ORDER_DEADLINE)
        except Exception as exc:
            self._failed(cert_id, _describe(exc), renewing, now)
            return False
        finally:
            if tokens:
                with self.db.write() as session:
                    session.execute(delete(AcmeChallenge).where(AcmeChallenge.token.in_(tokens)))
        self._issued(cert_id, final.fullchain_pem, key_pem, renewing)
        return True

    def _issued(self, cert_id: str, fullchain: str, key_pem: str, renewing: bool) -> None:
        info = info_of(parse_chain(fullchain)[0])
        with self.db.write() as session:
            cert = session.get(Certificate, cert_id)
            if cert is None:
                return  # removed while the order ran
            cert.fullchain_pem = fullchain
            cert.key_wrapped = self.keyring.wrap(
                key_pem.encode(), purpose=cert_key_purpose(cert.id)
            )
            held = holder(session, cert.hostname)
            if held is not None and held.id != cert.id:
                cert.status, cert.last_error = "failed", "already held by another app"
                cert.next_attempt_at = None
                return
            # A validated order is proof of control: the name is this app's now.
            cert.proven_at = cert.proven_at or _now()
            cert.status = "valid"
            cert.not_before, cert.not_after = info.not_before, info.not_after
            cert.detail = f"issued by {info.issuer}; renews at {renew_at(cert):%Y-%m-%d %H:%M} UTC"
            cert.last_error = ""
            cert.attempts = 0
            cert.next_attempt_at = renew_at(cert)
            cert.updated_at = _now()
            self._audit(
                session,
                cert,
                "cert.renew" if renewing else "cert.issue",
                "success",
                {
                    "not_after": info.not_after.isoformat(),
                    "serial": info.serial,
                },
            )
        ACME_ORDERS.labels("renew" if renewing else "issue", "success").inc()
        log.info("certificate for %s issued, valid until %s", info.sans, info.not_after)
        if self.on_change is not None:
            self.on_change()

    def _failed(self, cert_id: str, reason: str, renewing: bool, now: dt.datetime) -> None:
        with self.db.write() as session:
            cert = session.get(Certificate, cert_id)
            if cert is None:
                return
            cert.attempts += 1
            delay = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** (cert.attempts - 1)))
            cert.next_attempt_at = now + delay
            cert.last_error = reason
            # A failed renewal leaves the valid certificate serving until it expires.
            if not renewing:
                cert.status = "failed"
            cert.detail = (
                f"attempt {cert.attempts} failed; next at {cert.next_attempt_at:%H:%M:%S} UTC"
            )
            cert.updated_at = _now()
            self._audit(
                session,
                cert,
                "cert.renew" if renewing else "cert.issue",
                "failure",
                {
                    "reason": reason,
                    "attempt": cert.attempts,
                },
            )
        ACME_ORDERS.labels("renew" if renewing else "issue", "failure").inc()
        log.warning("certificate %s: %s", cert_id, reason)

    def _audit(
        self, session: Session, cert: Certificate, action: str, outcome: str, detail: dict[str, Any]
    ) -> None:
        app = session.get(App, cert.app_id)
        assert app is not None
        self.audit.record(
            session,
            ISSUER,
            org_id=app.org_id,
            action=action,
            target=f"{app.name} {cert.hostname}",
            outcome=outcome,
            detail=detail,
        )
