"""The metrics listener over mutual TLS, for a Prometheus on another host: only a metrics
scraper's certificate from the installation's CA is let in.

Tried as an attacker would: no certificate, a certificate from another CA
(naming itself a scraper), and a joined host's certificate from the same CA
are all refused; and a scraper's certificate opens nothing on the agents' API.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_agent_app
from hangar.config.settings import ServerSettings
from hangar.controlplane.state import ControlPlane
from hangar.crypto.ca import InternalCA
from hangar.crypto.hostcert import csr_for, new_host_key
from hangar.crypto.peercert import IssuedCert
from hangar.errors import ConfigError
from hangar.hostfs import write_private
from hangar.store.tables import AuditEvent
from hangar.telemetry.metrics import API_REQUESTS, MetricsServer, serve_metrics_tls
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_hosts import _as_host


def _client_files(directory: Path, name: str, cert_pem: str, key_pem: bytes) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_text(cert_pem)
    write_private(key, key_pem)
    return str(cert), str(key)


@pytest.fixture
def ca() -> InternalCA:
    return InternalCA.create("metrics-tls-test")


@pytest.fixture
def listener(ca: InternalCA, tmp_path: Path) -> Iterator[MetricsServer]:
    cert, key = ca.issue_server_cert(["localhost"], days=1)
    (tmp_path / "server.crt").write_bytes(cert)
    write_private(tmp_path / "server.key", key)
    (tmp_path / "ca.crt").write_text(ca.pem())
    server = serve_metrics_tls(
        "127.0.0.1",
        0,
        cert_file=tmp_path / "server.crt",
        key_file=tmp_path / "server.key",
        ca_file=tmp_path / "ca.crt",
    )
    yield server
    server.stop()


def _scrape(server: MetricsServer, ca_file: Path, cert: tuple[str, str] | None) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(*cert)
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(f"https://localhost:{server.port}/metrics")


def _issued(ca: InternalCA, kind: str, name: str, tmp_path: Path) -> tuple[str, str]:
    import datetime as dt

    key = new_host_key()
    csr = csr_for(key, "whatever")
    lifetime = dt.timedelta(hours=1)
    if kind == "scraper":
        cert = ca.issue_scraper_cert(csr, name, lifetime=lifetime)
    else:
        cert = ca.issue_host_cert(csr, name, lifetime=lifetime)
    return _client_files(tmp_path, f"{kind}-{name}", IssuedCert(cert).pem, key)


def test_only_a_scrapers_certificate_from_this_ca_is_let_in(
    listener: MetricsServer, ca: InternalCA, tmp_path: Path
) -> None:
    API_REQUESTS.labels("public", "GET", "/v1/probe", "200").inc()
    ca_file = tmp_path / "ca.crt"
    got = _scrape(listener, ca_file, _issued(ca, "scraper", "prom", tmp_path))
    assert got.status_code == 200
    assert 'route="/v1/probe"' in got.text and "hangar_api_requests_total" in got.text

    # No certificate: the handshake (or the first read after it) fails.
    with pytest.raises(httpx.HTTPError):
        _scrape(listener, ca_file, None)
    # A host's certificate from the same CA: let through TLS, then shut out.
    with pytest.raises(httpx.HTTPError):
        _scrape(listener, ca_file, _issued(ca, "host", "host_0123456789abcdef", tmp_path))
    # Another CA's certificate, naming itself a scraper.
    other = InternalCA.create("someone-else")
    with pytest.raises(httpx.HTTPError):
        _scrape(listener, ca_file, _issued(other, "scraper", "prom", tmp_path))
    # The listener still serves the scraper after all that.
    again = _scrape(listener, ca_file, _issued(ca, "scraper", "prom2", tmp_path))
    assert again.status_code == 200


def test_a_scraper_certificate_is_for_operators_audited_and_opens_no_agent_route(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    key = new_host_key()
    body = {"name": "prom", "csr": csr_for(key, "anything").decode(), "days": 30}
    made = api.post("/v1/system/metrics-certs", headers=h, json=body)
    assert made.status_code == 201, made.text
    issued = made.json()
    assert issued["ca_certificate"] == control_plane.ca.pem()
    assert "PRIVATE" not in made.text
    with control_plane.db.read() as session:
        (event,) = session.execute(
            select(AuditEvent).where(AuditEvent.action == "metrics.cert")
        ).scalars()
    assert event.target == "prom" and json.loads(event.detail)["serial"] == issued["serial"]

    # Bad input: a clear error, nothing issued.
    for bad in ({**body, "days": 398}, {**body, "name": "Prom Server"}, {**body, "csr": "x"}):
        refused = api.post("/v1/system/metrics-certs", headers=h, json=bad)
        assert refused.status_code == 422, refused.text
    # An organization's member (not an installation operator) is refused.
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "m@example.com", "role": "admin"})
    member = bearer(mint_token(control_plane, "m@example.com", kind="org", org="acme"))
    assert api.post("/v1/system/metrics-certs", headers=member, json=body).status_code == 403
    with control_plane.db.read() as session:
        events = session.execute(
            select(AuditEvent).where(AuditEvent.action == "metrics.cert")
        ).scalars()
        assert [e.outcome for e in events if e.outcome == "success"] == ["success"]

    # The agents' API does not take it for a host.
    agents = create_agent_app(control_plane)
    with TestClient(
        _as_host(agents, issued["certificate"]), raise_server_exceptions=False
    ) as scraper:
        assert scraper.get("/agent/v1/assignments").status_code in (401, 403)


def test_the_tls_listener_needs_metrics_on(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metrics_tls_port needs metrics_port"):
        from hangar.config.settings import load_settings

        load_settings(
            ServerSettings,
            flags={"data_dir": tmp_path, "metrics_port": 0, "metrics_tls_port": 9465},
        )
