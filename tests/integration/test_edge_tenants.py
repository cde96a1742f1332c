"""The edge between tenants, tried as an attacker would against real HAProxy.

Each test puts two organizations' routes on one edge and checks that what one
does cannot make the edge serve, or stop serving, the other: a certificate
chosen by SNI comes only from the organization the name routes to, a client
without SNI cannot reach a name that has its own certificate, and a route
HAProxy refuses (or cannot bind) is left out while every other keeps serving.
"""

# The fixtures come from test_edge and are named again as parameters.
# ruff: noqa: F811

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from cryptography import x509

from hangar.crypto.ca import InternalCA
from hangar.domain.routing import CertBundle, HttpRoute, RoutingTable, Server, TcpRoute
from hangar.edge.haproxy import Edge
from hangar.errors import CommandError
from tests.integration.test_edge import (  # noqa: F401
    Backend,
    backends,
    ca,
    edge,
    get,
    pytestmark,
)

NAME = "web1.tenants.test"


def _bundle(ca: InternalCA, name: str, org: str) -> CertBundle:
    cert, key = ca.issue_server_cert([name], days=30)
    return CertBundle(name, cert.decode() + ca.pem(), key.decode(), org=org)


def _route(app: str, org: str, names: tuple[str, ...], backend: Backend, **kw: object) -> HttpRoute:
    return HttpRoute(
        app=app,
        hostnames=names,
        servers=(Server(f"m_{app}", "::1", backend.port, True),),
        org=org,
        **kw,  # type: ignore[arg-type]
    )


def _presented(edge: Edge, sni: str) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", edge.cfg.https_port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def test_another_orgs_wildcard_never_answers_for_a_name(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """acme routes web1; globex holds *.tenants.test: web1's SNI never gets globex's key."""
    one, two = backends
    table = RoutingTable(
        http=(
            _route("web1", "acme", (NAME,), one),
            _route("shop", "globex", ("shop.tenants.test",), two),
        ),
        certs=(_bundle(ca, "*.tenants.test", "globex"),),
    )
    edge.apply(table)
    # globex's own name under its wildcard: served with it.
    assert _names(_presented(edge, "shop.tenants.test")) == ["*.tenants.test"]
    # acme's name: the default certificate, which names no one, and a refusal
    # for a connection that asks for it without a certificate of its own.
    seen = _presented(edge, NAME)
    assert seen.subject.rfc4514_string() == "CN=hangar-edge-default"
    assert get(edge, NAME, sni=NAME)[0] == 200  # routed, but under the default certificate
    # acme brings its own: now it is served with it, and globex's still not.
    table = RoutingTable(http=table.http, certs=(*table.certs, _bundle(ca, NAME, "acme")))
    edge.apply(table)
    assert _names(_presented(edge, NAME)) == [NAME]
    # A certificate of another organization for a name it does not route is
    # never listed at all.
    stray = _bundle(ca, "shop.tenants.test", "acme")
    edge.apply(RoutingTable(http=table.http, certs=(*table.certs, stray)))
    assert _names(_presented(edge, "shop.tenants.test")) == ["*.tenants.test"]


def _raw_without_sni(edge: Edge, host: str, *, servername: str | None = None) -> bytes:
    argv = ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{edge.cfg.https_port}"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    reply = subprocess.run(
        [*argv, "-alpn", "http/1.1"],
        input=f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
        capture_output=True,
        timeout=20,
    )
    return reply.stdout


def test_no_sni_reaches_no_name_with_its_own_certificate(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    one, two = backends
    edge.apply(
        RoutingTable(
            http=(
                _route("web1", "acme", (NAME,), one),
                _route("plain", "globex", ("plain.other.test",), two),
            ),
            certs=(_bundle(ca, NAME, "acme"),),
        )
    )
    # No SNI at all, and an address as SNI: refused for the certified name.
    assert _raw_without_sni(edge, NAME).startswith(b"HTTP/1.1 421")
    assert _raw_without_sni(edge, NAME, servername="127.0.0.1").startswith(b"HTTP/1.1 421")
    assert _raw_without_sni(edge, NAME, servername="::1").startswith(b"HTTP/1.1 421")
    # With its SNI it is served.
    assert get(edge, NAME, ca=ca)[0] == 200
    # A name without a certificate of its own is served under the default one
    # either way: nothing there for a missing SNI to bypass.
    assert _raw_without_sni(edge, "plain.other.test").startswith(b"HTTP/1.1 200")


def test_a_route_haproxy_refuses_is_quarantined_and_heals(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """A rate limit HAProxy cannot take leaves out that app only, until it is fixed."""
    one, two = backends
    good = _route("web1", "acme", (NAME,), one)
    table = RoutingTable(
        http=(good, _route("evil", "globex", ("evil.tenants.test",), two, rate_limit=2**63 - 1)),
        certs=(_bundle(ca, NAME, "acme"),),
    )
    with pytest.raises(CommandError, match="http:evil"):
        edge.apply(table)
    assert get(edge, NAME, ca=ca)[0] == 200
    assert get(edge, "evil.tenants.test", sni="")[0] == 404
    assert "http:evil" in edge.status()["quarantined"]
    # Every other change still applies while it is out.
    other = _route("web2", "acme", ("web2.tenants.test",), one)
    with pytest.raises(CommandError, match="http:evil"):
        edge.apply(RoutingTable(http=(*table.http, other), certs=table.certs))
    assert get(edge, "web2.tenants.test", sni="")[0] == 200
    # Fixed: it comes back, and nothing stays quarantined.
    fixed = _route("evil", "globex", ("evil.tenants.test",), two, rate_limit=100)
    edge.apply(RoutingTable(http=(good, fixed, other), certs=table.certs))
    assert get(edge, "evil.tenants.test", sni="")[0] == 200
    assert edge.status()["quarantined"] == {}


def test_a_port_taken_on_the_host_is_quarantined_and_heals(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """A TCP service on a bound port stays out; every app keeps answering; freed, it binds."""
    one, two = backends
    web = _route("web1", "acme", (NAME,), one)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    table = RoutingTable(
        http=(web,),
        tcp=(TcpRoute("db", port, (Server("m_db", "::1", two.port, True),)),),
        certs=(_bundle(ca, NAME, "acme"),),
    )
    try:
        with pytest.raises(CommandError, match=f"tcp:db:{port}"):
            edge.apply(table)
        assert get(edge, NAME, ca=ca)[0] == 200
        assert f"tcp:db:{port}" in edge.status()["quarantined"]
    finally:
        squatter.close()
    # The cause is gone: the next round binds it (a quarantine is retried).
    edge.retry_after = 0.0
    edge.apply(table)
    assert edge.status()["quarantined"] == {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
        assert conn.recv(64).startswith(b"HTTP/1.1 200")
    assert get(edge, NAME, ca=ca)[0] == 200


def test_many_routes_one_broken_certificate(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """A certificate HAProxy cannot load is left out; the others' routes and keys serve."""
    one, _ = backends
    table = RoutingTable(
        http=(_route("web1", "acme", (NAME,), one),),
        certs=(
            _bundle(ca, NAME, "acme"),
            CertBundle("broken.tenants.test", "not a certificate", "nor a key", org="globex"),
        ),
    )
    with pytest.raises(CommandError, match="cert:broken"):
        edge.apply(table)
    assert "cert:broken.tenants.test" in edge.status()["quarantined"]
    assert _names(_presented(edge, NAME)) == [NAME]
    assert get(edge, NAME, ca=ca)[0] == 200


def test_a_taken_port_and_a_refused_route_at_once(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """Two tenants' faults in one table: both are left out, the third tenant serves."""
    one, two = backends
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        table = RoutingTable(
            http=(
                _route("web1", "acme", (NAME,), one),
                _route("evil", "globex", ("evil.tenants.test",), two, rate_limit=2**63 - 1),
            ),
            tcp=(TcpRoute("db", port, (Server("m_db", "::1", two.port, True),)),),
            certs=(_bundle(ca, NAME, "acme"),),
        )
        with pytest.raises(CommandError):
            edge.apply(table)
        assert set(edge.status()["quarantined"]) == {"http:evil", f"tcp:db:{port}"}
        assert get(edge, NAME, ca=ca)[0] == 200
