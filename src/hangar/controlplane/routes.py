"""The edge's routing table, built from the store.

An app is routed only if its current release declares ``[http_service]`` or
``[[services]]``. Its HTTP route answers on ``<app>.<edge domain>`` and on
every host name added with ``hangar certs add``; its servers are its started
machines, in rotation only while they run the version they should and pass
their checks. The current release is the newest that is complete or
rolling out, so a failed release never changes routing.

Certificate keys are unwrapped here, on the control plane, once per
certificate and kept in memory; the table travels to edge hosts over mutual
TLS and lands on their tmpfs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import socket
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.config.appconfig import AppConfig
from hangar.config.settings import ServerSettings
from hangar.controlplane.machines import release_config
from hangar.crypto.ca import InternalCA
from hangar.crypto.keyring import Keyring
from hangar.domain.routing import (
    CertBundle,
    HttpRoute,
    RoutingTable,
    Server,
    TcpRoute,
    hsts_header,
)
from hangar.errors import Conflict, HangarError, ValidationError
from hangar.store.tables import App, Certificate, Machine, Release

__all__ = [
    "RouteBuilder",
    "ServicePorts",
    "api_address",
    "cert_key_purpose",
    "check_service_ports",
    "reserved_ports",
    "route_builder",
]

log = logging.getLogger("hangar.routes")

LIVE_RELEASES = ("complete", "running")


def cert_key_purpose(cert_id: str) -> str:
    return f"edge-cert-key:{cert_id}"


def api_address(listen_host: str, listen_port: int) -> str:
    """``host:port`` where this host reaches its own API (the edge forwards ACME there)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcard.get(listen_host, listen_host)
    return f"[{host}]:{listen_port}" if ":" in host else f"{host}:{listen_port}"


@dataclass(frozen=True)
class ServicePorts:
    """Which edge ports apps' TCP services may take.

    ``reserved`` are the edge's and the server's own; a service port must lie
    in ``low``..``high`` (an operator's setting); ``probe_host``, when the
    edge runs on this host, is where it binds, to see a port already in use.
    """

    reserved: frozenset[int]
    low: int = 1
    high: int = 65535
    probe_host: str | None = None


def reserved_ports(settings: ServerSettings) -> ServicePorts:
    """Ports of the edge host that no app's TCP service may take, and the range they may."""
    reserved = {settings.edge_http_port, settings.edge_https_port, settings.listen_port}
    reserved |= {p for p in (settings.edge_metrics_port, settings.agent_listen_port) if p}
    return ServicePorts(
        frozenset(reserved),
        settings.edge_service_port_min,
        settings.edge_service_port_max,
        settings.edge_listen_host if settings.edge and settings.agent else None,
    )


def _in_use(host: str, port: int) -> bool:
    """True if something on this host listens on ``port`` (a bind without SO_REUSEPORT fails)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def route_builder(keyring: Keyring, ca: InternalCA, settings: ServerSettings) -> RouteBuilder:
    """The builder the server's settings call for (edge domain, ports no app may take)."""
    return RouteBuilder(
        keyring=keyring,
        ca=ca,
        edge_domain=settings.edge_domain,
        acme_responder=api_address(settings.listen_host, settings.listen_port),
        reserved_ports=reserved_ports(settings).reserved,
    )


def check_service_ports(
    session: Session, app: App, config: AppConfig, reserved: ServicePorts | frozenset[int]
) -> None:
    """Refuse a release whose TCP service ports the edge, another app or the host holds.

    A port must be in the operator's range, not the edge's own, not another
    app's, and (where the edge runs on this host) not in use by anything else:
    a port HAProxy cannot bind would otherwise only be found at the edge.
    """
    wanted = {p.port for svc in config.services if svc.protocol == "tcp" for p in svc.ports}
    if not wanted:
        return
    policy = reserved if isinstance(reserved, ServicePorts) else ServicePorts(reserved)
    clash = sorted(wanted & policy.reserved)
    if clash:
        raise Conflict(
            f"port {clash[0]} is the edge's own; a [[services]] port must be another",
            hint="pick another ports.port in hangar.toml",
        )
    outside = sorted(p for p in wanted if not policy.low <= p <= policy.high)
    if outside:
        raise ValidationError(
            f"port {outside[0]} is outside the range this installation gives TCP services"
            f" ({policy.low}-{policy.high})",
            hint="pick a ports.port in that range in hangar.toml",
        )
    newest = (
        select(Release.app_id, func.max(Release.version).label("version"))
        .where(Release.status.in_(LIVE_RELEASES), Release.app_id != app.id)
        .group_by(Release.app_id)
        .subquery()
    )
    for release in session.execute(
        select(Release).join(
            newest, (Release.app_id == newest.c.app_id) & (Release.version == newest.c.version)
        )
    ).scalars():
        cfg = release_config(release)
        taken = {p.port for svc in cfg.services if svc.protocol == "tcp" for p in svc.ports}
        if wanted & taken:
            # Another app's, maybe another organization's: say which port, not whose.
            raise Conflict(
                f"port {min(wanted & taken)} is already served by another app",
                hint="pick another ports.port in hangar.toml",
            )
    if policy.probe_host is None:
        return
    # The app's own current ports are held by the edge itself: not probed.
    own = newest_of(session, app.id)
    held = (
        set()
        if own is None
        else {
            p.port
            for svc in release_config(own).services
            if svc.protocol == "tcp"
            for p in svc.ports
        }
    )
    busy = sorted(p for p in wanted - held if _in_use(policy.probe_host, p))
    if busy:
        raise Conflict(
            f"port {busy[0]} is already in use on the edge host",
            hint="pick another ports.port in hangar.toml",
        )


def newest_of(session: Session, app_id: str) -> Release | None:
    """The app's newest live release (the one routed), if any."""
    return session.execute(
        select(Release)
        .where(Release.app_id == app_id, Release.status.in_(LIVE_RELEASES))
        .order_by(Release.version.desc())
        .limit(1)
    ).scalar_one_or_none()


@dataclass
class RouteBuilder:
    """Builds routing tables; keeps unwrapped keys and parsed configs between builds."""

    keyring: Keyring
    ca: InternalCA | None = None
    edge_domain: str = ""
    acme_responder: str | None = None
    reserved_ports: frozenset[int] = frozenset()
    _keys: dict[tuple[str, bytes], str] = field(default_factory=dict, repr=False)
    _configs: dict[str, AppConfig] = field(default_factory=dict, repr=False)
    _domain_bundle: CertBundle | None = field(default=None, repr=False)
    _domain_renew_at: dt.datetime | None = field(default=None, repr=False)

    def _config(self, release: Release) -> AppConfig:
        cfg = self._configs.get(release.id)
        if cfg is None:
            cfg = self._configs[release.id] = release_config(release)
        return cfg

    def _key(self, cert: Certificate) -> str | None:
        assert cert.key_wrapped is not None
        digest = hashlib.sha256(cert.key_wrapped).digest()
        cached = self._keys.get((cert.id, digest))
        if cached is None:
            try:
                plain = self.keyring.unwrap(cert.key_wrapped, purpose=cert_key_purpose(cert.id))
            except HangarError as exc:
                log.error("certificate %s: cannot unwrap its key: %s", cert.hostname, exc)
                return None
            cached = self._keys[(cert.id, digest)] = plain.decode()
        return cached

    def _edge_domain_bundle(self, now: dt.datetime) -> CertBundle | None:
        """``*.<edge domain>`` from the internal CA, unless an operator brought one."""
        if not self.edge_domain or self.ca is None:
            return None
        bundle = self._domain_bundle
        if bundle is None or self._domain_renew_at is None or now >= self._domain_renew_at:
            cert_pem, key_pem = self.ca.issue_server_cert([f"*.{self.edge_domain}"], days=90)
            bundle = CertBundle(
                f"*.{self.edge_domain}", cert_pem.decode() + self.ca.pem(), key_pem.decode()
            )
            self._domain_bundle = bundle
            self._domain_renew_at = now + dt.timedelta(days=60)
        return bundle

    def build(self, session: Session, now: dt.datetime | None = None) -> RoutingTable:
        now = now or dt.datetime.now(dt.UTC)
        newest = (
            select(Release.app_id, func.max(Release.version).label("version"))
            .where(Release.status.in_(LIVE_RELEASES))
            .group_by(Release.app_id)
            .subquery()
        )
        current = {
            r.app_id: r
            for r in session.execute(
                select(Release).join(
                    newest,
                    (Release.app_id == newest.c.app_id) & (Release.version == newest.c.version),
                )
            ).scalars()
        }
        apps = {a.id: a for a in session.execute(select(App).order_by(App.name)).scalars()}
        machines: dict[str, list[Machine]] = {}
        for m in session.execute(
            select(Machine)
            .where(Machine.desired == "started", Machine.one_off.is_(False))
            .order_by(Machine.id)
        ).scalars():
            machines.setdefault(m.app_id, []).append(m)
        releases = {
            (r.app_id, r.version): r
            for r in session.execute(
                select(Release).where(Release.app_id.in_(list(machines)))
            ).scalars()
        }
        # Only names an app holds (proved control of) are routed and certified:
        # a claim not yet proven reaches nothing.
        certs = list(
            session.execute(
                select(Certificate)
                .where(Certificate.proven_at.is_not(None))
                .order_by(Certificate.hostname)
            ).scalars()
        )
        names: dict[str, list[str]] = {}
        for cert in certs:
            names.setdefault(cert.app_id, []).append(cert.hostname)

        http: list[HttpRoute] = []
        tcp: list[TcpRoute] = []
        taken = set(self.reserved_ports)
        for app_id, release in sorted(current.items(), key=lambda kv: apps[kv[0]].name):
            app = apps[app_id]
            cfg = self._config(release)
            if cfg.http_service is None and not cfg.services:
                continue  # declared nothing: unreachable from outside

            def servers(port_of: str, internal: int, app_id: str = app_id) -> tuple[Server, ...]:
                out = []
                for m in machines.get(app_id, []):
                    rel = releases.get((app_id, m.version))
                    port = internal
                    if rel is not None and port_of == "http":
                        mcfg = self._config(rel)
                        if mcfg.http_service is not None:
                            port = mcfg.http_service.internal_port
                    # In rotation only once its checks pass (machines without
                    # checks are healthy as soon as they run).
                    up = (
                        m.state == "started"
                        and m.running_version == m.version
                        and m.healthy is True
                    )
                    out.append(Server(m.id, m.address, port, up))
                return tuple(out)

            service = cfg.http_service
            if service is not None:
                hostnames = list(names.get(app_id, []))
                if self.edge_domain:
                    hostnames.insert(0, f"{app.name}.{self.edge_domain}")
                hsts = service.hsts
                http.append(
                    HttpRoute(
                        app=app.name,
                        hostnames=tuple(hostnames),
                        servers=servers("http", service.internal_port),
                        force_https=service.force_https,
                        hsts=hsts_header(hsts.max_age, hsts.include_subdomains, hsts.preload)
                        if hsts.enabled
                        else None,
                        soft_limit=service.concurrency.soft_limit,
                        hard_limit=service.concurrency.hard_limit,
                        rate_limit=service.rate_limit,
                        org=app.org_id,
                    )
                )
            for svc in cfg.services:
                if svc.protocol != "tcp":
                    continue
                for port in svc.ports:
                    if port.port in taken:
                        log.warning("app %s: port %d is taken; not routed", app.name, port.port)
                        continue
                    taken.add(port.port)
                    tcp.append(
                        TcpRoute(
                            app=app.name,
                            port=port.port,
                            servers=servers("tcp", svc.internal_port),
                            tls="tls" in port.handlers,
                            proxy_protocol="proxy_proto" in port.handlers,
                            hard_limit=svc.concurrency.hard_limit,
                        )
                    )

        bundles: list[CertBundle] = []
        domain_bundle = self._edge_domain_bundle(now)
        if domain_bundle is not None:
            bundles.append(domain_bundle)
        for cert in certs:
            if cert.fullchain_pem is None or cert.key_wrapped is None:
                continue
            if cert.not_after is not None and cert.not_after <= now:
                continue  # expired: the default certificate is as good, and names no one
            key = self._key(cert)
            if key is not None:
                owner = apps.get(cert.app_id)
                org = owner.org_id if owner is not None else "?"
                bundles.append(CertBundle(cert.hostname, cert.fullchain_pem, key, org=org))
        return RoutingTable(
            http=tuple(http),
            tcp=tuple(tcp),
            certs=tuple(bundles),
            acme_responder=self.acme_responder,
        )
