"""The edge end to end: `hangar server run` with its HAProxy, real machines and Pebble.

A person deploys an app, adds a host name, watches the certificate issue
from an ACME server that really validates the HTTP-01 challenge through the
edge, and keeps every request answered while machines are replaced.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.conftest import running_server
from tests.e2e.test_cli_flow import Server, free_port
from tests.e2e.test_deploy_flow import CONFIG
from tests.edge_client import EdgeConnection
from tests.pebble import Pebble, have_pebble, pebble

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("haproxy") is None or not have_pebble(),
        reason="needs haproxy and pebble (`make deps` installs them)",
    ),
]

APP_HOST = "hello.apps.localhost"


@dataclass
class Edge:
    srv: Server
    tmp: Path
    agent_root: Path
    http_port: int
    https_port: int
    acme: Pebble

    def config(self, name: str, *, interval: str = "0.5s", env: str = "") -> Path:
        path = self.tmp / name
        text = CONFIG.format(image=self.tmp / "image", path="/healthz", wait="60s")
        text = text.replace('interval = "0.5s"', f'interval = "{interval}"')
        if env:
            text += f'[env]\n  RELEASE_NOTE = "{env}"\n'
        path.write_text(text)
        return path

    def status(self) -> dict[str, object]:
        data = self.srv.json("edge", "status")
        assert isinstance(data, dict)
        return data


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def fetch(
    edge: Edge, host: str, trust: str, path: str = "/"
) -> tuple[int, bytes, x509.Certificate]:
    ctx = ssl.create_default_context(cadata=trust)
    conn = EdgeConnection(host, edge.https_port, ctx)
    try:
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read(), x509.load_der_x509_certificate(der)
    finally:
        conn.close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    http_port, https_port = free_port(), free_port()
    with pebble(tmp_path / "pebble", http_port) as acme:
        toml = "\n".join(
            [
                'edge_listen_host = "127.0.0.1"',
                f"edge_http_port = {http_port}",
                f"edge_https_port = {https_port}",
                f"edge_metrics_port = {free_port()}",
                f'acme_directory_url = "{acme.directory_url}"',
                f'acme_ca_bundle = "{acme.ca_bundle}"',
                "acme_poll_seconds = 1",
                "",
            ]
        )
        with running_server(tmp_path, "edge", server_toml=toml, apps=("hello", "other")) as (
            srv,
            agent_root,
        ):
            yield Edge(srv, tmp_path, agent_root, http_port, https_port, acme)


def in_rotation(edge: Edge, app: str) -> list[str]:
    routes = edge.status()["routes"]
    assert isinstance(routes, list)
    for route in routes:
        if route["app"] == app:
            return [s["machine"] for s in route["servers"] if s["up"]]
    return []


def test_certificates_from_acme_through_the_edge(edge: Edge) -> None:
    srv = edge.srv
    srv.cli("deploy", "--config", str(edge.config("hello.toml")))
    wait_for("the machine in rotation", lambda: in_rotation(edge, "hello"))
    ca = (srv.data_dir / "ca.crt").read_text()
    status, body, _ = fetch(edge, APP_HOST, ca)
    assert status == 200 and b"Hello from Hangar" in body

    # Bad input: a clear error, and nothing held.
    for bad, words in (
        ("not_a_host", "is not a host name"),
        ("10.1.2.3", "is not a host name"),
        ("x.apps.localhost", "edge domain"),
    ):
        out = srv.cli("certs", "add", bad, "--app", "hello", check=False)
        assert out.returncode != 0 and words in out.stderr, out.stderr
    assert srv.json("certs", "list", "--app", "hello") == []

    added = srv.cli("certs", "add", "clinic.test", "--app", "hello").stdout
    assert "DNS:" in added and "certs show clinic.test" in added

    def issued() -> dict[str, object] | None:
        data = srv.json("certs", "show", "clinic.test", "--app", "hello")
        assert isinstance(data, dict)
        return data if data["status"] == "valid" else None

    first = wait_for("the certificate to issue", issued)
    assert isinstance(first, dict) and first["names"] == ["clinic.test"]
    assert "Pebble" in str(first["issuer"]) and first["order_url"]
    roots = edge.acme.roots_pem()

    def served() -> tuple[int, bytes, x509.Certificate] | None:
        # The edge applies a new certificate on its next routing change, a moment
        # after the store says it is valid; until then it answers with its own.
        try:
            return fetch(edge, "clinic.test", roots)
        except ssl.SSLCertVerificationError:
            return None

    # Served by SNI, chaining to the ACME server's root.
    got = wait_for("the edge to serve the new certificate", served)
    assert isinstance(got, tuple)
    status, body, cert = got
    assert status == 200 and b"Hello from Hangar" in body
    assert format(cert.serial_number, "x") == first["serial"]

    # Another app cannot take the name; the answer names neither app nor org.
    srv.cli("apps", "create", "other")
    taken = srv.cli("certs", "add", "clinic.test", "--app", "other", check=False)
    assert taken.returncode != 0 and "already held by another app" in taken.stderr

    # Renewal: a new certificate and key, served without a restart.
    srv.cli("certs", "renew", "clinic.test", "--app", "hello")

    def renewed() -> dict[str, object] | None:
        data = issued()
        return data if data and data["serial"] != first["serial"] else None

    second = wait_for("the renewal", renewed)
    assert isinstance(second, dict)
    wait_for(
        "the edge to serve the renewed certificate",
        lambda: format(fetch(edge, "clinic.test", roots)[2].serial_number, "x") == second["serial"],
    )

    # A challenge that cannot be validated: the error shows, nothing else changes.
    edge.acme.set_address("broken.test", "127.0.0.2")
    srv.cli("certs", "add", "broken.test", "--app", "hello")

    def failed() -> dict[str, object] | None:
        data = srv.json("certs", "show", "broken.test", "--app", "hello")
        assert isinstance(data, dict)
        return data if data["status"] == "failed" else None

    broken = wait_for("the failed order", failed)
    assert isinstance(broken, dict) and broken["last_error"] and broken["next_attempt_at"]
    shown = srv.cli("certs", "show", "broken.test", "--app", "hello").stdout
    assert "Last error" in shown and str(broken["last_error"])[:30] in shown
    assert fetch(edge, "clinic.test", roots)[0] == 200

    actions = [
        (e["action"], e["outcome"])
        for e in srv.json("audit", "list", "--org", "acme", "--limit", "1000")  # type: ignore[union-attr]
    ]
    for wanted in (
        ("cert.add", "success"),
        ("cert.issue", "success"),
        ("cert.renew", "success"),
        ("cert.issue", "failure"),
    ):
        assert wanted in actions, wanted
    srv.cli("audit", "verify", "--org", "acme")

    # Keys are wrapped at rest: no private key in the store's files.
    for path in srv.data_dir.glob("hangar.db*"):
        assert b"PRIVATE KEY" not in path.read_bytes(), path

    # Removed: the name is unknown again, answered with the default certificate.
    srv.cli("certs", "remove", "clinic.test", "--app", "hello", "--yes")
    gone = ssl.create_default_context()
    gone.check_hostname, gone.verify_mode = False, ssl.CERT_NONE

    def unknown() -> bool:
        conn = EdgeConnection("clinic.test", edge.https_port, gone)
        try:
            conn.request("GET", "/", headers={"Host": "clinic.test"})
            return conn.getresponse().status == 421
        finally:
            conn.close()

    wait_for("clinic.test to be unknown", unknown)


@dataclass
class Load:
    """A bounded stream of HTTPS requests through the edge, counting every failure."""

    edge: Edge
    trust: str
    failures: list[str]
    stale: list[str]
    count: int = 0

    def run(self, done: threading.Event, limit: int = 30_000) -> None:
        ctx = ssl.create_default_context(cadata=self.trust)
        deadline = time.monotonic() + 240
        while not done.is_set() and self.count < limit and time.monotonic() < deadline:
            conn = EdgeConnection(APP_HOST, self.edge.https_port, ctx)
            try:
                for n in range(10):
                    try:
                        conn.request("GET", "/", headers={"Host": APP_HOST})
                        response = conn.getresponse()
                    except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                        if n == 0:
                            raise
                        # An idle keep-alive connection closed by a reload just as
                        # the request left: retried by HTTP/1.1 clients (RFC 9112 9.3.1).
                        self.stale.append(repr(exc))
                        break
                    body = response.read()
                    self.count += 1
                    if response.status != 200 or b"Hello from Hangar" not in body:
                        self.failures.append(
                            f"{time.strftime('%H:%M:%S')} {response.status} {body[:80]!r}"
                        )
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()


def two_machines(edge: Edge) -> list[str]:
    srv = edge.srv
    srv.cli("deploy", "--config", str(edge.config("hello.toml")))
    srv.cli("machines", "create", "--app", "hello")
    up = wait_for("two machines in rotation", lambda: len(in_rotation(edge, "hello")) == 2)
    assert up
    return in_rotation(edge, "hello")


def test_no_request_fails_during_a_rolling_deploy(edge: Edge) -> None:
    srv = edge.srv
    before = two_machines(edge)
    load = Load(edge, (srv.data_dir / "ca.crt").read_text(), [], [])
    done = threading.Event()
    thread = threading.Thread(target=load.run, args=(done,))
    thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        out = srv.cli("deploy", "--config", str(edge.config("v2.toml", env="second")))
        rolled = time.monotonic() - started
        assert "Release v2 is live." in out.stdout
        # Routes of another app change while the load goes on.
        srv.cli("apps", "create", "other")
        other = edge.config("other.toml").read_text().replace('app = "hello"', 'app = "other"')
        (edge.tmp / "other.toml").write_text(other)
        srv.cli("deploy", "--config", str(edge.tmp / "other.toml"))
        time.sleep(1)
    finally:
        done.set()
        thread.join(timeout=120)
    print(
        f"\nrolling deploy of 2 machines: {rolled:.1f}s; {load.count} requests through the edge,"
        f" {len(load.failures)} failed, {len(load.stale)} idle connections closed by reloads"
    )
    assert load.count > 100
    assert load.failures == []
    assert len(load.stale) <= 10, load.stale
    machines = srv.json("machines", "list", "--app", "hello")
    assert isinstance(machines, list)
    assert sorted(m["id"] for m in machines) == sorted(before)
    assert all(m["running_version"] == 2 for m in machines)


def test_a_failing_machine_leaves_rotation_and_returns(edge: Edge) -> None:
    srv = edge.srv
    srv.cli("deploy", "--config", str(edge.config("hello.toml", interval="1s")))
    srv.cli("machines", "create", "--app", "hello")
    wait_for("two machines in rotation", lambda: len(in_rotation(edge, "hello")) == 2)
    victim = in_rotation(edge, "hello")[0]
    # Machines find each other by name on the private network.
    listed = srv.json("machines", "list", "--app", "hello")
    assert isinstance(listed, list)

    def both_named() -> bool:
        named = srv.cli(
            "machines",
            "exec",
            victim,
            "--app",
            "hello",
            "--",
            "nslookup",
            "hello.internal",
            check=False,
        )
        return all(m["address"] in named.stdout for m in listed)

    # Names follow machines within a second or so.
    wait_for("both machines named hello.internal", both_named, timeout=30)
    # Serve from a writable copy so a check can be made to fail from inside.
    srv.cli(
        "machines",
        "update",
        victim,
        "--app",
        "hello",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/www && cp /www/* /tmp/www/ && exec httpd -f -p 8080 -h /tmp/www",
    )

    def serving_from_tmp() -> bool:
        probe = srv.cli(
            "machines",
            "exec",
            victim,
            "--app",
            "hello",
            "--",
            "test",
            "-f",
            "/tmp/www/healthz",
            check=False,
        )
        return probe.returncode == 0 and victim in in_rotation(edge, "hello")

    wait_for("the updated machine back in rotation", serving_from_tmp)
    srv.cli("machines", "exec", victim, "--app", "hello", "--", "rm", "/tmp/www/healthz")
    broke = time.monotonic()
    wait_for(
        "the failing machine to leave rotation", lambda: victim not in in_rotation(edge, "hello")
    )
    left = time.monotonic() - broke
    proxies = edge.status()["proxies"]
    assert isinstance(proxies, list)
    assert {p["name"]: p["status"] for p in proxies if p["proxy"] == "app_hello"}[victim] == "MAINT"
    ca = (srv.data_dir / "ca.crt").read_text()
    assert all(fetch(edge, APP_HOST, ca)[0] == 200 for _ in range(20))
    srv.cli(
        "machines", "exec", victim, "--app", "hello", "--", "sh", "-c", "echo ok > /tmp/www/healthz"
    )
    wait_for("the machine to return", lambda: victim in in_rotation(edge, "hello"))
    print(f"\ncheck interval 1s: the failing machine left rotation after {left:.1f}s")


def test_the_apps_figures_at_the_edge_reach_its_organization(edge: Edge) -> None:
    """The server's own agent reads HAProxy's exporter; a member reads them through the API."""
    srv = edge.srv
    srv.cli("deploy", "--config", str(edge.config("hello.toml")))
    wait_for("the machine in rotation", lambda: in_rotation(edge, "hello"))
    ca = (srv.data_dir / "ca.crt").read_text()
    for _ in range(5):
        status, _, _ = fetch(edge, APP_HOST, ca)
        assert status == 200
    trust = ssl.create_default_context(cadata=ca)

    def answered() -> list[Sample]:
        text = httpx.get(
            f"{srv.api}/v1/orgs/acme/metrics",
            headers={"Authorization": f"Bearer {srv.token}"},
            verify=trust,
            timeout=10,
        ).text
        found = [
            s
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "hangar_edge_http_responses_total" and s.labels.get("code") == "2xx"
        ]
        return [s for s in found if s.value >= 5]

    samples = wait_for("the edge's figures for hello", answered)
    assert isinstance(samples, list) and len(samples) == 1
    assert samples[0].labels["app"] == "hello" and samples[0].labels["org"].startswith("org_")
