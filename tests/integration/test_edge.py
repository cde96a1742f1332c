"""The edge for real: HAProxy configured by Hangar, probed over loopback as a client would.

Backends here are small HTTP servers on ``::1`` standing in for machines
(the end-to-end tests put real machines behind the edge); HAProxy, its
reloads, its runtime API and its TLS are the real thing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.utils import CryptographyDeprecationWarning

from hangar.crypto.ca import InternalCA
from hangar.domain.routing import CertBundle, HttpRoute, RoutingTable, Server, hsts_header
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.errors import CommandError
from tests.edge_client import EdgeConnection

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="needs haproxy (`make deps` installs it)"
)

# Mozilla's published "intermediate" profile, version 6.0, kept with the tests.
PROFILE = Path(__file__).resolve().parents[1] / "data/mozilla-intermediate-6.0.json"
DOMAIN = "apps.example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        super().__init__(("::1", 0), _Echo)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, Backend)
        server.hits += 1
        status = 404 if self.path == "/missing" else 200
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"backend": server.name, "headers": headers}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def running_edge(tmp: Path) -> Iterator[Edge]:
    directory = Path("/run") / f"hangar-edge-test-{tmp.name[-24:]}"
    cfg = EdgeConfig(
        directory=directory,
        bind_host="127.0.0.1",
        http_port=free_port(),
        https_port=free_port(),
        metrics_port=free_port(),
    )
    edge = Edge(cfg)
    try:
        yield edge
    finally:
        edge.stop()
        subprocess.run(["umount", str(directory)], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    with running_edge(tmp_path) as e:
        yield e


@pytest.fixture(scope="module")
def ca() -> InternalCA:
    return InternalCA.create("edge-test")


_WILDCARDS: dict[int, CertBundle] = {}


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    made = [Backend("one"), Backend("two")]
    yield made
    for b in made:
        b.shutdown()
        b.server_close()


def wildcard(ca: InternalCA) -> CertBundle:
    """One ``*.<DOMAIN>`` certificate per CA (a new one would change the table's shape)."""
    if id(ca) not in _WILDCARDS:
        cert, key = ca.issue_server_cert([f"*.{DOMAIN}"], days=90)
        _WILDCARDS[id(ca)] = CertBundle(f"*.{DOMAIN}", cert.decode() + ca.pem(), key.decode())
    return _WILDCARDS[id(ca)]


def clinic_table(
    ca: InternalCA, backends: list[Backend], *, up: tuple[bool, ...] = (True, True), **route: object
) -> RoutingTable:
    fields: dict[str, object] = {
        "app": "clinic",
        "hostnames": (f"clinic.{DOMAIN}",),
        "servers": tuple(
            Server(f"m_{b.name}", "::1", b.port, ok) for b, ok in zip(backends, up, strict=True)
        ),
        "hsts": hsts_header(63072000, True, False),
        **route,
    }
    return RoutingTable(http=(HttpRoute(**fields),), certs=(wildcard(ca),))  # type: ignore[arg-type]


def tls_context(ca: InternalCA | None) -> ssl.SSLContext:
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cadata=ca.pem())


@dataclass(frozen=True)
class Tls:
    version: str
    cert_der: bytes


def get(
    edge: Edge,
    host: str,
    path: str = "/",
    *,
    https: bool = True,
    ca: InternalCA | None = None,
    sni: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, Tls | None]:
    """One request to the edge at 127.0.0.1 for ``host``; (status, headers, body, tls socket)."""
    port = edge.cfg.https_port if https else edge.cfg.http_port
    conn: http.client.HTTPConnection
    tls = None
    if https:
        conn = EdgeConnection(host if sni is None else sni, port, tls_context(ca))
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        tls = Tls(conn.sock.version() or "", conn.sock.getpeercert(binary_form=True) or b"")
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body, tls
    finally:
        conn.close()


def test_routes_tls_hsts_and_forwarding(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    assert edge.apply(clinic_table(ca, backends)) is True
    status, headers, body, tls = get(
        edge, f"clinic.{DOMAIN}", ca=ca, headers={"X-Forwarded-For": "6.6.6.6"}
    )
    assert status == 200
    assert headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    seen = json.loads(body)["headers"]
    # The client's own forwarding claims are replaced by what the edge saw.
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["hangar-client-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert len(seen["hangar-request-id"]) == 36
    assert tls is not None and tls.version in ("TLSv1.2", "TLSv1.3")

    # HSTS is on the app's own 404 and on the edge's 301 too.
    status, headers, _, _ = get(edge, f"clinic.{DOMAIN}", "/missing", ca=ca)
    assert status == 404 and headers["strict-transport-security"].startswith("max-age=63072000")
    status, headers, _, _ = get(edge, f"clinic.{DOMAIN}", "/a?b=1", https=False)
    assert status == 301
    assert headers["location"] == f"https://clinic.{DOMAIN}:{edge.cfg.https_port}/a?b=1"
    assert headers["strict-transport-security"].startswith("max-age=63072000")


def test_http_is_served_where_https_is_not_forced(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    edge.apply(clinic_table(ca, backends, force_https=False, hsts=None))
    status, headers, body, _ = get(edge, f"clinic.{DOMAIN}", https=False)
    assert status == 200 and "strict-transport-security" not in headers
    assert json.loads(body)["headers"]["x-forwarded-proto"] == "http"


def test_unknown_names_reveal_nothing(edge: Edge, ca: InternalCA, backends: list[Backend]) -> None:
    edge.apply(clinic_table(ca, backends))
    internal = ("clinic", "m_one", "m_two", "::1", "haproxy", "hangar", "app_")
    # An unknown Host, over HTTP and HTTPS (no SNI: by address).
    for https in (False, True):
        status, headers, body, _ = get(edge, "other.example.org", https=https, sni="")
        assert status == 404
        text = (body.decode() + json.dumps(headers)).lower()
        assert not [w for w in internal if w in text], text
        assert "strict-transport-security" not in headers
    # An unknown SNI: the default certificate, which names no tenant, and a 421.
    status, headers, body, tls = get(edge, "other.example.org")
    assert status == 421
    assert tls is not None
    der = tls.cert_der
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.rfc4514_string() == "CN=hangar-edge-default"
    assert b"clinic" not in der and DOMAIN.encode() not in der
    # An address sent as SNI (RFC 6066 forbids it; some clients do) counts as none,
    # and a name with its own certificate is not served on a connection without one.
    reply = subprocess.run(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-connect",
            f"127.0.0.1:{edge.cfg.https_port}",
            "-servername",
            "127.0.0.1",
            "-alpn",
            "http/1.1",
        ],
        input=f"GET / HTTP/1.1\r\nHost: clinic.{DOMAIN}\r\nConnection: close\r\n\r\n".encode(),
        capture_output=True,
        timeout=20,
    )
    assert reply.stdout.startswith(b"HTTP/1.1 421"), reply.stdout[:200]
    # A known SNI with another Host (domain fronting) is refused too.
    status, _, _, _ = get(edge, "other.example.org", sni=f"clinic.{DOMAIN}", ca=ca)
    assert status == 421


def test_an_undeclared_app_is_unreachable(edge: Edge, ca: InternalCA) -> None:
    """No route: a 404 by Host over HTTP, a 421 by SNI over HTTPS, nothing forwarded."""
    edge.apply(RoutingTable(certs=(wildcard(ca),)))
    assert get(edge, f"clinic.{DOMAIN}", https=False)[0] == 404
    assert get(edge, f"clinic.{DOMAIN}", ca=ca)[0] == 421
    assert get(edge, f"clinic.{DOMAIN}", sni="")[0] == 404


def test_health_changes_need_no_reload(edge: Edge, ca: InternalCA, backends: list[Backend]) -> None:
    edge.apply(clinic_table(ca, backends))
    reloads = edge.reloads
    assert edge.apply(clinic_table(ca, backends, up=(False, True))) is False
    assert edge.reloads == reloads
    states = {
        p["name"]: p["status"] for p in edge.status()["proxies"] if p["proxy"] == "app_clinic"
    }
    assert states["m_one"] == "MAINT" and states["m_two"] != "MAINT"
    before = backends[0].hits
    for _ in range(10):
        assert json.loads(get(edge, f"clinic.{DOMAIN}", ca=ca)[2])["backend"] == "two"
    assert backends[0].hits == before
    edge.apply(clinic_table(ca, backends))
    seen = {json.loads(get(edge, f"clinic.{DOMAIN}", ca=ca)[2])["backend"] for _ in range(20)}
    assert seen == {"one", "two"}


def test_a_rejected_config_never_goes_live(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    good = clinic_table(ca, backends)
    edge.apply(good)
    current = edge.current.resolve()
    broken = RoutingTable(
        http=good.http,
        certs=(*good.certs, CertBundle("broken.example.org", "not a certificate", "nor a key")),
    )
    with pytest.raises(CommandError) as caught:
        edge.apply(broken)
    assert "haproxy" in caught.value.message
    assert "refused" in edge.status()["error"]
    assert edge.current.resolve() == current
    assert get(edge, f"clinic.{DOMAIN}", ca=ca)[0] == 200
    # And the next good table applies as usual.
    assert edge.apply(clinic_table(ca, backends, up=(True, False))) in (True, False)
    assert get(edge, f"clinic.{DOMAIN}", ca=ca)[0] == 200


def test_a_failed_reload_rolls_back(edge: Edge, ca: InternalCA, backends: list[Backend]) -> None:
    """A port taken by someone else passes `haproxy -c` but fails the reload."""
    edge.apply(clinic_table(ca, backends))
    current = edge.current.resolve()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        from hangar.domain.routing import TcpRoute

        taken = RoutingTable(
            http=clinic_table(ca, backends).http,
            tcp=(TcpRoute("db", port, (Server("m_one", "::1", backends[0].port, True),)),),
            certs=(wildcard(ca),),
        )
        with pytest.raises(CommandError):
            edge.apply(taken)
    assert edge.current.resolve() == current
    assert "previous configuration restored" in edge.status()["error"]
    assert get(edge, f"clinic.{DOMAIN}", ca=ca)[0] == 200


def test_rate_limit_answers_429(edge: Edge, ca: InternalCA, backends: list[Backend]) -> None:
    edge.apply(clinic_table(ca, backends, rate_limit=1))
    statuses = [get(edge, f"clinic.{DOMAIN}", ca=ca)[0] for _ in range(15)]
    assert statuses[:10] == [200] * 10
    assert 429 in statuses[10:]


def test_a_new_agent_adopts_the_running_edge(
    tmp_path: Path, ca: InternalCA, backends: list[Backend]
) -> None:
    with running_edge(tmp_path) as first:
        first.apply(clinic_table(ca, backends))
        pid = first.master_pid()
        again = Edge(first.cfg)
        assert again.running() and again.master_pid() == pid
        again.apply(clinic_table(ca, backends))
        assert again.master_pid() == pid  # reloaded, not restarted
        assert get(again, f"clinic.{DOMAIN}", ca=ca)[0] == 200


def test_no_request_fails_while_routes_change(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """Bounded constant load on one app while another app's routes change 20 times."""
    base = clinic_table(ca, backends)
    edge.apply(base)
    failures: list[str] = []
    stale: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        ctx = tls_context(ca)
        while not done.is_set() and count < 5000:
            conn = EdgeConnection(f"clinic.{DOMAIN}", edge.cfg.https_port, ctx)
            try:
                for n in range(20):  # keep-alive, as browsers do
                    try:
                        conn.request("GET", "/", headers={"Host": f"clinic.{DOMAIN}"})
                        response = conn.getresponse()
                    except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                        if n == 0:
                            raise
                        # An idle keep-alive connection the old worker closed as
                        # the request left: HTTP/1.1 clients retry these once, on
                        # a new connection (RFC 9112, 9.3.1), as browsers do.
                        stale.append(repr(exc))
                        break
                    response.read()
                    count += 1
                    if response.status != 200:
                        failures.append(str(response.status))
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for n in range(20):
            other = HttpRoute(
                app=f"other{n}",
                hostnames=(f"other{n}.{DOMAIN}",),
                servers=(Server("m_two", "::1", backends[1].port, True),),
            )
            assert edge.apply(RoutingTable(http=(*base.http, other), certs=base.certs)) is True
    finally:
        done.set()
        thread.join(timeout=60)
    assert count > 50
    assert failures == []
    # Only idle connections may be closed by a reload, and not most of them.
    assert len(stale) <= 20, stale


def test_metrics_are_local_and_prometheus(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    edge.apply(clinic_table(ca, backends))
    conn = http.client.HTTPConnection("127.0.0.1", edge.cfg.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert "haproxy_backend_status" in text and 'proxy="app_clinic"' in text
    config = (edge.current / "haproxy.cfg").read_text()
    assert f"bind 127.0.0.1:{edge.cfg.metrics_port}" in config


def test_keys_live_on_a_private_tmpfs(edge: Edge, ca: InternalCA, backends: list[Backend]) -> None:
    edge.apply(clinic_table(ca, backends))
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    assert any(f" {edge.dir} tmpfs " in line for line in mounts)
    assert edge.dir.stat().st_mode & 0o777 == 0o700
    for pem in edge.current.glob("*.pem"):
        assert pem.resolve().stat().st_mode & 0o077 == 0


def _sslyze(edge: Edge, ca: InternalCA, tmp: Path) -> dict[str, str]:
    """sslyze against the Mozilla intermediate 6.0 profile; the issues it finds."""
    from sslyze import (
        CertificateInfoExtraArgument,
        ScanCommandsExtraArguments,
        Scanner,
        ServerNetworkLocation,
        ServerScanRequest,
    )
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationAsJson,
        check_server_against_tls_configuration,
    )

    ca_file = tmp / "ca.pem"
    ca_file.write_text(ca.pem())
    profile = TlsConfigurationAsJson.model_validate_json(PROFILE.read_text())
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(
            f"clinic.{DOMAIN}", edge.cfg.https_port, ip_address="127.0.0.1"
        ),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
        ),
    )
    with warnings.catch_warnings():
        # sslyze's bundled trust stores hold a root with a negative serial number.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        scanner = Scanner()
        scanner.queue_scans([request])
        (result,) = list(scanner.get_results())
    try:
        check_server_against_tls_configuration(result, profile)
    except ServerNotCompliantWithTlsConfiguration as exc:
        return dict(exc.issues)
    return {}


@pytest.mark.slow
def test_tls_meets_mozilla_intermediate_and_the_check_can_fail(
    tmp_path: Path, ca: InternalCA, backends: list[Backend]
) -> None:
    with running_edge(tmp_path) as edge:
        edge.apply(clinic_table(ca, backends))
        assert _sslyze(edge, ca, tmp_path) == {}
    weak_dir = tmp_path / "weak"
    weak_dir.mkdir()
    with running_edge(weak_dir) as good:
        weak = Edge(
            EdgeConfig(
                directory=good.cfg.directory,
                bind_host="127.0.0.1",
                http_port=good.cfg.http_port,
                https_port=good.cfg.https_port,
                extra_ciphers="ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
            )
        )
        weak.apply(clinic_table(ca, backends))
        issues = _sslyze(weak, ca, tmp_path)
        weak.stop()
    assert "ciphers" in issues, issues
    assert "CBC" in issues["ciphers"] or "SHA" in issues["ciphers"]


def test_tcp_services_only_on_their_ports(
    edge: Edge, ca: InternalCA, backends: list[Backend]
) -> None:
    """A declared TCP port (TLS terminated here) reaches the machine; nothing else opens."""
    from hangar.domain.routing import TcpRoute

    port = free_port()
    table = RoutingTable(
        http=clinic_table(ca, backends).http,
        tcp=(TcpRoute("db", port, (Server("m_one", "::1", backends[0].port, True),), tls=True),),
        certs=(wildcard(ca),),
    )
    edge.apply(table)
    ctx = tls_context(ca)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=f"db.{DOMAIN}") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b'"backend": "one"' in reply
    # This edge's workers listen on exactly the ports it was asked for.
    workers, _ = edge._procs()
    owned = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True).stdout
    listening = {
        int(line.split()[3].rsplit(":", 1)[1])
        for line in owned.splitlines()
        if any(f"pid={w}," in line for w in workers)
    }
    assert listening == {edge.cfg.http_port, edge.cfg.https_port, edge.cfg.metrics_port, port}
