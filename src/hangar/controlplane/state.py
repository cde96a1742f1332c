"""The control plane's parts, opened once from an initialised data directory."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hangar.audit.log import AuditContext, AuditLog
from hangar.audit.witness import Witnesses
from hangar.auth.oidc import OidcClient
from hangar.auth.ratelimit import FailureLimiter
from hangar.auth.sessions import SessionService
from hangar.auth.tokens import Principal, TokenService
from hangar.config.settings import ServerSettings
from hangar.contract.links import HostMachines
from hangar.controlplane.execbroker import ExecBroker
from hangar.controlplane.exportrelay import ExportRelay
from hangar.controlplane.metricscache import MetricsCache
from hangar.crypto.ca import InternalCA
from hangar.crypto.kek import KekProvider, provider_for
from hangar.crypto.keyring import Keyring
from hangar.crypto.macaroons import TokenKeys
from hangar.crypto.signing import AuditSigner
from hangar.errors import ConfigError
from hangar.store.db import Database
from hangar.store.tables import Setting

if TYPE_CHECKING:
    from hangar.controlplane.routes import RouteBuilder

__all__ = ["BREAK_GLASS_SETTING", "ControlPlane", "kek_provider"]

log = logging.getLogger("hangar.auth")

# The settings row naming the token `hangar server init` printed: the
# operator's emergency access, every use of which is audited prominently.
BREAK_GLASS_SETTING = "break_glass_token_id"


def kek_provider(settings: ServerSettings) -> KekProvider:
    """The KEK's provider the settings name (never a weaker fallback)."""
    return provider_for(settings.kek_provider, settings)


@dataclass
class ControlPlane:
    settings: ServerSettings
    db: Database
    keyring: Keyring
    tokens: TokenService
    audit: AuditLog
    audit_public_pem: bytes
    ca: InternalCA
    # Commands for machines on other hosts, waiting for those hosts' agents.
    execs: ExecBroker = field(default_factory=ExecBroker)
    # Snapshot exports, relayed from a volume's host to the person who asked.
    exports: ExportRelay = field(default_factory=ExportRelay)
    # What agents shipped of each machine's metrics, served to its organization.
    app_metrics: MetricsCache = field(default_factory=MetricsCache)
    # Set by the server that runs the loops: desired or observed state changed.
    wake: Callable[[], None] = field(default=lambda: None)
    # Set by the server that runs the ACME issuer: a certificate wants ordering.
    wake_acme: Callable[[], None] = field(default=lambda: None)
    # The machines on this process's own host, when it runs an agent.
    local: HostMachines | None = None
    _break_glass: list[str] = field(default_factory=list)

    @functools.cached_property
    def oidc(self) -> OidcClient:
        """The OpenID Connect client (discovery documents and JWKS cached per provider)."""
        return OidcClient()

    @functools.cached_property
    def signin_limiter(self) -> FailureLimiter:
        """Failed sign-ins per address and per person, with backoff."""
        return FailureLimiter()

    @functools.cached_property
    def sessions(self) -> SessionService:
        """People's sign-in sessions."""
        return SessionService(self.db, self.tokens)

    def break_glass_token_id(self) -> str:
        """The id of the bootstrap (break-glass) token ("" if the store names none)."""
        if not self._break_glass:
            with self.db.read() as session:
                row = session.get(Setting, BREAK_GLASS_SETTING)
            self._break_glass.append(row.value if row is not None else "")
        return self._break_glass[0]

    def break_glass_used(
        self,
        principal: Principal,
        client_addr: str | None,
        target: str,
        request_id: str | None = None,
    ) -> None:
        """Record a use of the break-glass token: a distinct event and a warning, every time."""
        log.warning(
            "break-glass: the bootstrap token %s was used by %s from %s for %s",
            principal.token_id,
            principal.email,
            client_addr or "?",
            target,
        )
        ctx = AuditContext(
            actor=principal.email,
            token_id=principal.token_id,
            request_id=request_id,
            client_addr=client_addr,
        )
        with self.db.write() as session:
            self.audit.record(
                session,
                ctx,
                org_id=None,
                action="auth.break_glass",
                target=target,
                detail={"warning": "the installation's bootstrap token was used"},
            )

    @classmethod
    def open(cls, settings: ServerSettings, *, migrate: bool = True) -> ControlPlane:
        """Load keys (refusing loose or wrong ones), connect, migrate."""
        data_dir = settings.data_dir
        if not (data_dir / "ca.crt").exists():
            raise ConfigError(
                f"{data_dir} is not an initialised Hangar data directory",
                hint=f"run `hangar server init --data-dir {data_dir}`",
            )
        keyring = Keyring(kek_provider(settings))
        # Unwrapping proves this is the KEK the installation was made with.
        signer = AuditSigner.load(data_dir, keyring)
        ca = InternalCA.load(data_dir, keyring)
        witnesses = Witnesses.from_urls(settings.audit_witness, data_dir=data_dir)
        db = Database(settings.effective_database_url)
        if migrate:
            db.migrate()
        return cls(
            settings=settings,
            db=db,
            keyring=keyring,
            tokens=TokenService(TokenKeys(keyring)),
            audit=AuditLog(
                signer, checkpoint_every=settings.audit_checkpoint_every, witnesses=witnesses
            ),
            audit_public_pem=signer.public_pem(),
            ca=ca,
        )

    @functools.cached_property
    def routes(self) -> RouteBuilder:
        """The routing-table builder (it keeps unwrapped keys between builds)."""
        from hangar.controlplane.routes import route_builder

        return route_builder(self.keyring, self.ca, self.settings)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def close(self) -> None:
        self.db.dispose()
