"""The edge's configuration as text: a ``RoutingTable`` in, ``haproxy.cfg`` and its maps out.

``render`` is pure: the routing table and the edge's settings become the text
of ``haproxy.cfg``, its map files (host -> backend, HTTPS redirects, HSTS)
and the certificates with their crt-list. ``edge.haproxy`` writes, validates
and swaps them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hangar.domain.routing import (
    ACME_CHALLENGE_PREFIX,
    CertBundle,
    HttpRoute,
    RoutingTable,
    Server,
    TcpRoute,
    http_backend,
    tcp_backend,
)
from hangar.edge.accesslog import FORMAT as ACCESS_FORMAT
from hangar.edge.accesslog import SOCKET as ACCESS_SOCKET
from hangar.tlsprofile import CURVES, TLS12_CIPHERS, TLS13_SUITES

__all__ = ["MISDIRECTED", "NOT_FOUND", "EdgeConfig", "Rendered", "render"]


# Each HTTP request, without its query string, to the agent (see edge.accesslog).
ACCESS_LOG = ["    log global", f'    log-format "{ACCESS_FORMAT}"']
NOT_FOUND = "404 not found: no app answers to this name\n"
MISDIRECTED = "421 misdirected request\n"


@dataclass(frozen=True)
class EdgeConfig:
    """Where the edge listens and keeps its files (from the server's settings)."""

    directory: Path
    bind_host: str = "::"
    http_port: int = 80
    https_port: int = 443
    metrics_port: int = 0  # 0: no Prometheus exporter
    acme_ca_file: Path | None = None  # verifies the control plane when forwarding challenges
    acme_verify_name: str = "localhost"
    # Extra lines for the TLS bind (tests use this to prove a weak profile is caught).
    extra_ciphers: str = ""
    tmpfs_mb: int = 64

    def bind(self, port: int) -> str:
        host = self.bind_host
        if ":" in host:
            return f"[{host}]:{port}" + (" v4v6" if host == "::" else "")
        return f"{host}:{port}"


@dataclass(frozen=True)
class Rendered:
    config: str
    maps: dict[str, str]
    certs: dict[str, str] = field(repr=False)  # file name -> PEM (chain and key)
    crt_list: str = ""


def _server_line(server: Server, *, maxconn: int, extra: str = "", with_state: bool) -> str:
    line = f"    server {server.name} [{server.address}]:{server.port} maxconn {maxconn}{extra}"
    if with_state and not server.up:
        line += " disabled"
    return line


def _cert_file(hostname: str) -> str:
    return "cert-" + hostname.replace("*", "_wildcard_") + ".pem"


def render(table: RoutingTable, cfg: EdgeConfig, conf_dir: Path, *, with_state: bool) -> Rendered:
    """The whole HAProxy configuration for ``table``; files named as in ``conf_dir``."""
    d = conf_dir
    hosts_map: list[str] = []
    redirect_map: list[str] = []
    hsts_map: list[str] = []
    for route in sorted(table.http, key=lambda r: r.app):
        for hostname in route.hostnames:
            hosts_map.append(f"{hostname} {http_backend(route.app)}")
            if route.force_https:
                redirect_map.append(f"{hostname} 1")
            if route.hsts:
                hsts_map.append(f"{hostname} {route.hsts}")
    certs = {
        _cert_file(c.hostname): c.fullchain_pem.rstrip() + "\n" + c.key_pem for c in table.certs
    }
    owners = {name: route.org for route in table.http for name in route.hostnames}
    crt_list = "".join(
        f"{d / _cert_file(c.hostname)} [alpn h2,http/1.1] {' '.join(filters)}\n"
        for c in sorted(table.certs, key=lambda c: c.hostname)
        if (filters := _sni_filters(c, owners))
    )
    # Routed names that have a certificate of their own: a request for one of
    # them must arrive on a connection whose SNI named it.
    tls_names = sorted(name for name, org in owners.items() if _certified(table, name, org))
    ciphers = TLS12_CIPHERS + (":" + cfg.extra_ciphers if cfg.extra_ciphers else "")
    tls_bind = f"ssl crt {d / 'default.pem'} crt-list {d / 'certs.list'} alpn h2,http/1.1"
    hosts = d / "hosts.map"
    lines = [
        "# Written by the Hangar agent from the routing table; edits are overwritten.",
        "global",
        "    master-worker",
        f"    stats socket {cfg.directory / 'admin.sock'} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        f"    log {cfg.directory / ACCESS_SOCKET} len 8192 format raw local0 info",
        "    hard-stop-after 5m",
        f"    ssl-default-bind-ciphers {ciphers}",
        f"    ssl-default-bind-ciphersuites {TLS13_SUITES}",
        f"    ssl-default-bind-curves {CURVES}",
        "    ssl-default-bind-options prefer-client-ciphers no-sslv3 no-tlsv10 no-tlsv11"
        " no-tls-tickets",
        f"    ssl-default-server-ciphers {TLS12_CIPHERS}",
        "    ssl-default-server-options no-sslv3 no-tlsv10 no-tlsv11",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 60s",
        "    timeout queue 30s",
        "    timeout tunnel 1h",
        "    retries 3",
        # A machine being replaced may close a connection under a request:
        # idempotent requests are tried again on another machine.
        "    retry-on conn-failure empty-response response-timeout 503",
        "    option redispatch 1",
        "    option http-keep-alive",
        # On a reload, the old worker answers each keep-alive connection's next
        # request with "Connection: close" instead of closing it idle: a client
        # that just sent a request on it would see the connection drop.
        "    option idle-close-on-response",
        "",
        "frontend http-in",
        *ACCESS_LOG,
        f"    bind {cfg.bind(cfg.http_port)}",
        f"    acl acme path_beg {ACME_CHALLENGE_PREFIX}",
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        f"    acl known var(txn.host),map_str({hosts}) -m found",
        f'    http-request return status 404 content-type text/plain string "{NOT_FOUND.strip()}"'
        " if !acme !known",
        f"    http-request set-var(txn.hsts) var(txn.host),map_str({d / 'hsts.map'})",
        f"    http-request redirect {_https_target(cfg)} code 301 if !acme"
        f" {{ var(txn.host),map_str({d / 'redirect.map'}) -m found }}",
        *_forward_headers("http"),
        "    http-after-response set-header Strict-Transport-Security %[var(txn.hsts)]"
        " if { var(txn.hsts) -m found }",
        "    use_backend acme if acme",
        f"    use_backend %[var(txn.host),map_str({hosts})]",
        "",
        "frontend https-in",
        *ACCESS_LOG,
        f"    bind {cfg.bind(cfg.https_port)} {tls_bind}",
        "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        "    http-request set-var(txn.sni) ssl_fc_sni,lower",
        # RFC 6066 forbids an address as SNI; a client that sends one sent none.
        "    http-request unset-var(txn.sni) if { var(txn.sni) -m reg ^[0-9.]+$|: }",
        f"    acl known var(txn.host),map_str({hosts}) -m found",
        "    acl has_sni var(txn.sni) -m found",
        f"    acl sni_known var(txn.sni),map_str({hosts}) -m found",
        "    acl sni_is_host var(txn.sni),strcmp(txn.host) eq 0",
        f"    acl host_has_cert var(txn.host),map_str({d / 'tls.map'}) -m found",
        # Never answer for one name on a connection set up for another; and a
        # name with its own certificate only on a connection that asked for it
        # by name (no SNI, or an address, would reach it under the default one).
        f'    http-request return status 421 content-type text/plain string "{MISDIRECTED.strip()}"'
        " if has_sni !sni_known or has_sni !sni_is_host or !has_sni host_has_cert",
        f'    http-request return status 404 content-type text/plain string "{NOT_FOUND.strip()}"'
        " if !known",
        f"    http-request set-var(txn.hsts) var(txn.host),map_str({d / 'hsts.map'})",
        *_forward_headers("https"),
        "    http-after-response set-header Strict-Transport-Security %[var(txn.hsts)]"
        " if { var(txn.hsts) -m found }",
        f"    use_backend %[var(txn.host),map_str({hosts})]",
        "",
    ]
    if cfg.metrics_port:
        lines += [
            "frontend metrics",
            f"    bind 127.0.0.1:{cfg.metrics_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request return status 404",
            "",
        ]
    lines += ["backend acme"]
    if table.acme_responder and cfg.acme_ca_file is not None:
        name = cfg.acme_verify_name
        lines.append(
            f"    server control-plane {table.acme_responder} ssl verify required"
            f" ca-file {cfg.acme_ca_file} sni str({name}) verifyhost {name}"
        )
    else:
        lines.append(
            '    http-request return status 404 content-type text/plain string "no issuer"'
        )
    lines.append("")
    for route in sorted(table.http, key=lambda r: r.app):
        lines += _http_backend(route, with_state)
    for tcp in sorted(table.tcp, key=lambda r: (r.port, r.app)):
        lines += _tcp_frontend(tcp, cfg, tls_bind, with_state)
    maps = {
        "hosts.map": "".join(line + "\n" for line in sorted(hosts_map)),
        "redirect.map": "".join(line + "\n" for line in sorted(redirect_map)),
        "hsts.map": "".join(line + "\n" for line in sorted(hsts_map)),
        "tls.map": "".join(f"{name} 1\n" for name in tls_names),
    }
    return Rendered("\n".join(lines) + "\n", maps, certs, crt_list)


def _sni_filters(cert: CertBundle, owners: dict[str, str]) -> list[str]:
    """The SNI names HAProxy may present ``cert`` for.

    A certificate serves a routed name only if its organization is the one
    the name routes to: another organization's wildcard never answers for a
    name it does not hold (``!name`` excludes it from the wildcard). The
    installation's own certificates (no organization) cover what they cover.
    """
    filters = [cert.hostname]
    if cert.org and owners.get(cert.hostname, cert.org) != cert.org:
        return []
    if cert.org and cert.hostname.startswith("*."):
        filters += [
            f"!{name}"
            for name, org in sorted(owners.items())
            if org != cert.org and cert.covers(name)
        ]
    return filters


def _certified(table: RoutingTable, name: str, org: str) -> bool:
    return any(c.covers(name) and c.org in ("", org) for c in table.certs)


def _https_target(cfg: EdgeConfig) -> str:
    if cfg.https_port == 443:
        return "scheme https"
    return f"location https://%[var(txn.host)]:{cfg.https_port}%[capture.req.uri]"


def _forward_headers(proto: str) -> list[str]:
    # Set, never appended: a client cannot smuggle its own address or protocol in.
    return [
        "    http-request del-header Forwarded",
        "    http-request set-header X-Forwarded-For %[src]",
        f"    http-request set-header X-Forwarded-Proto {proto}",
        "    http-request set-header Hangar-Client-IP %[src]",
        "    http-request set-header Hangar-Request-Id %[uuid()]",
    ]


def _http_backend(route: HttpRoute, with_state: bool) -> list[str]:
    lines = [f"backend {http_backend(route.app)}", "    balance leastconn"]
    if route.rate_limit:
        # Per client address, averaged over ten seconds.
        lines += [
            "    stick-table type ipv6 size 100k expire 30s store http_req_rate(10s)",
            "    http-request track-sc1 src",
            f"    http-request deny deny_status 429 if {{ sc_http_req_rate(1) gt"
            f" {route.rate_limit * 10} }}",
        ]
    if not route.servers:
        lines.append("    # no machines yet")
    extra = f" minconn {route.soft_limit}"
    for server in route.servers:
        lines.append(
            _server_line(server, maxconn=route.hard_limit, extra=extra, with_state=with_state)
        )
    return [*lines, ""]


def _tcp_frontend(tcp: TcpRoute, cfg: EdgeConfig, tls_bind: str, with_state: bool) -> list[str]:
    name = tcp_backend(tcp.app, tcp.port)
    bind = f"    bind {cfg.bind(tcp.port)}" + (f" {tls_bind}" if tcp.tls else "")
    lines = [f"frontend {name}", "    mode tcp", bind, f"    default_backend {name}", ""]
    lines += [f"backend {name}", "    mode tcp", "    balance leastconn"]
    extra = " send-proxy-v2" if tcp.proxy_protocol else ""
    for server in tcp.servers:
        lines.append(
            _server_line(server, maxconn=tcp.hard_limit, extra=extra, with_state=with_state)
        )
    return [*lines, ""]
