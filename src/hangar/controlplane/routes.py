"""The edge's routing table, built from the store.

An app is routed only if its current release declares ``[http_service]`` or
``[[services]]``. Its HTTP route answers on ``<app>.<edge domain>`` and on
every host name added with ``hangar certs add``; its servers are its started
machines, in rotation only while they run the version they should and pass
their checks, and never while a deploy holds them out (a machine draining
before it moves, a blue-green's new set before its switch and its old set
after it). The current release is the newest that is complete or rolling
out, so a failed release never changes routing.

Certificate keys are unwrapped here, on the control plane, once per
certificate and kept in memory; the table travels to edge hosts over mutual
TLS and lands on their tmpfs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.config.appconfig import AppConfig
from hangar.config.settings import ServerSettings
from hangar.controlplane.deployer import held_out

# The checks a release passes live in edgecheck; offered here as before.
from hangar.controlplane.edgecheck import (
    LIVE_RELEASES,
    ServicePorts,
    check_edge_accepts,
    check_service_ports,
    http_route,
    reserved_ports,
    tcp_routes,
)
from hangar.controlplane.machines import release_config
from hangar.crypto.ca import InternalCA
from hangar.crypto.keyring import Keyring
from hangar.domain.routing import CertBundle, HttpRoute, RoutingTable, Server, TcpRoute
from hangar.errors import HangarError
from hangar.store.tables import App, Certificate, Machine, Release

__all__ = [
    "RouteBuilder",
    "ServicePorts",
    "api_address",
    "cert_key_purpose",
    "check_edge_accepts",
    "check_service_ports",
    "http_route",
    "reserved_ports",
    "route_builder",
    "tcp_routes",
]

log = logging.getLogger("hangar.routes")


def cert_key_purpose(cert_id: str) -> str:
    return f"edge-cert-key:{cert_id}"


def api_address(listen_host: str, listen_port: int) -> str:
    """``host:port`` where this host reaches its own API (the edge forwards ACME there)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcard.get(listen_host, listen_host)
    return f"[{host}]:{listen_port}" if ":" in host else f"{host}:{listen_port}"


def route_builder(keyring: Keyring, ca: InternalCA, settings: ServerSettings) -> RouteBuilder:
    """The builder the server's settings call for (edge domain, ports no app may take)."""
    return RouteBuilder(
        keyring=keyring,
        ca=ca,
        edge_domain=settings.edge_domain,
        acme_responder=api_address(settings.listen_host, settings.listen_port),
        reserved_ports=reserved_ports(settings).reserved,
    )


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

            held = held_out(release)

            def servers(
                port_of: str, internal: int, app_id: str = app_id, held: frozenset[str] = held
            ) -> tuple[Server, ...]:
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
                        and m.id not in held
                    )
                    out.append(Server(m.id, m.address, port, up))
                return tuple(out)

            if cfg.http_service is not None:
                hostnames = list(names.get(app_id, []))
                if self.edge_domain:
                    hostnames.insert(0, f"{app.name}.{self.edge_domain}")
                route = http_route(app.name, cfg, tuple(hostnames), app.org_id)
                assert route is not None
                internal = cfg.http_service.internal_port
                http.append(dataclasses.replace(route, servers=servers("http", internal)))
            for route_tcp, internal in tcp_routes(app.name, cfg):
                if route_tcp.port in taken:
                    log.warning("app %s: port %d is taken; not routed", app.name, route_tcp.port)
                    continue
                taken.add(route_tcp.port)
                tcp.append(dataclasses.replace(route_tcp, servers=servers("tcp", internal)))

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
