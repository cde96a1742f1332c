"""What the edge must accept of an app's services, checked when a release is made.

A release is refused, with a reason its author can act on, when the edge
could not serve it: routes HAProxy refuses (checked alone with
``haproxy -c``), a TCP service port outside the operator's range, the edge's
own, another app's, or in use on the edge host. Each would otherwise be found
only at the edge, where the route is quarantined. The route shapes an app's
configuration declares (``http_route``, ``tcp_routes``) are built here too,
for the routing table and for these checks alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hangar.config.appconfig import AppConfig
from hangar.config.settings import ServerSettings
from hangar.controlplane.machines import release_config
from hangar.domain.routing import HttpRoute, RoutingTable, Server, TcpRoute, hsts_header
from hangar.edge.quarantine import check_alone
from hangar.errors import CommandError, Conflict, ValidationError
from hangar.store.tables import App, Release

__all__ = [
    "LIVE_RELEASES",
    "ServicePorts",
    "check_edge_accepts",
    "check_service_ports",
    "http_route",
    "newest_of",
    "reserved_ports",
    "tcp_routes",
]

LIVE_RELEASES = ("complete", "running")


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
    # Configurations HAProxy already accepted in this request (checked once).
    accepted: set[str] = field(default_factory=set, compare=False, repr=False)


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


def check_service_ports(
    session: Session, app: App, config: AppConfig, reserved: ServicePorts | frozenset[int]
) -> None:
    """Refuse a release whose services the edge could not serve.

    Its routes must pass ``haproxy -c`` on their own (``check_edge_accepts``);
    a TCP service port must be in the operator's range, not the edge's own,
    not another app's, and (where the edge runs on this host) not in use by
    anything else: each would otherwise only be found at the edge.
    """
    policy = reserved if isinstance(reserved, ServicePorts) else ServicePorts(reserved)
    digest = config.model_dump_json()
    if digest not in policy.accepted:
        check_edge_accepts(app, config)
        policy.accepted.add(digest)
    wanted = {p.port for svc in config.services if svc.protocol == "tcp" for p in svc.ports}
    if not wanted:
        return
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


def http_route(app: str, cfg: AppConfig, hostnames: tuple[str, ...], org: str) -> HttpRoute | None:
    """The app's HTTP route as its configuration declares it (no servers yet)."""
    service = cfg.http_service
    if service is None:
        return None
    hsts = service.hsts
    return HttpRoute(
        app=app,
        hostnames=hostnames,
        servers=(),
        force_https=service.force_https,
        hsts=hsts_header(hsts.max_age, hsts.include_subdomains, hsts.preload)
        if hsts.enabled
        else None,
        soft_limit=service.concurrency.soft_limit,
        hard_limit=service.concurrency.hard_limit,
        rate_limit=service.rate_limit,
        org=org,
    )


def tcp_routes(app: str, cfg: AppConfig) -> list[tuple[TcpRoute, int]]:
    """The app's TCP service ports as routes (no servers yet), each with its internal port."""
    return [
        (
            TcpRoute(
                app=app,
                port=port.port,
                servers=(),
                tls="tls" in port.handlers,
                proxy_protocol="proxy_proto" in port.handlers,
                hard_limit=svc.concurrency.hard_limit,
            ),
            svc.internal_port,
        )
        for svc in cfg.services
        if svc.protocol == "tcp"
        for port in svc.ports
    ]


def check_edge_accepts(app: App, config: AppConfig) -> None:
    """Refuse a release whose routes HAProxy refuses (its configuration, checked alone).

    A value HAProxy cannot take would otherwise be found only at the edge,
    where the route is quarantined; here the deploy fails and says why.
    Skipped where HAProxy is not installed (the edge quarantines it then).
    """
    route = http_route(app.name, config, (f"{app.name}.check.invalid",), app.org_id)
    table = RoutingTable(
        http=() if route is None else (dataclasses.replace(route, servers=(_PROBE,)),),
        tcp=tuple(
            dataclasses.replace(r, servers=(_PROBE,)) for r, _ in tcp_routes(app.name, config)
        ),
    )
    if not table.http and not table.tcp:
        return
    try:
        check_alone(table)
    except CommandError as exc:
        raise ValidationError(
            f"the edge cannot serve this configuration: {_first_alert(exc.stderr)}",
            hint="fix [http_service] or [[services]] in hangar.toml",
        ) from exc


_PROBE = Server("probe", "::1", 1, True)


def _first_alert(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if "ALERT" in line or "error" in line]
    return (lines or [stderr.strip() or "refused"])[0][:300]
