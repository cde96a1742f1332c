"""A real Prometheus (Debian's) scrapes a running server and its agent; asked through its API."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import running_server
from tests.e2e.test_cli_flow import Server, free_port
from tests.e2e.test_deploy_flow import write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is missing"),
]

SCRAPE = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: hangar
    static_configs:
      - targets: ["127.0.0.1:{port}"]
  # What a member of acme scrapes: the organization's machines through the API.
  - job_name: acme
    scheme: https
    metrics_path: /v1/orgs/acme/metrics
    authorization:
      credentials_file: {token}
    tls_config:
      ca_file: {ca}
    static_configs:
      - targets: ["127.0.0.1:{api_port}"]
  # A Prometheus on another host: the listener over mutual TLS, with a scraper's certificate.
  - job_name: hangar-tls
    scheme: https
    tls_config:
      ca_file: {scraper}/ca.crt
      cert_file: {scraper}/prom.crt
      key_file: {scraper}/prom.key
    static_configs:
      - targets: ["127.0.0.1:{tls_port}"]
  # The same without a client certificate: refused.
  - job_name: hangar-tls-anonymous
    scheme: https
    tls_config:
      ca_file: {scraper}/ca.crt
    static_configs:
      - targets: ["127.0.0.1:{tls_port}"]
"""


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[Server, Path, str]]:
    """A server with its agent (metrics on a free loopback port) and a Prometheus scraping it."""
    metrics_port, prom_port, tls_port = free_port(), free_port(), free_port()
    options = ("--no-edge", "--metrics-port", str(metrics_port))
    toml = f'metrics_tls_listen_host = "127.0.0.1"\nmetrics_tls_port = {tls_port}\n'
    with running_server(tmp_path, "metrics", *options, server_toml=toml) as (srv, _):
        scraper = tmp_path / "scraper"
        srv.cli("server", "metrics-cert", "prom", "--out", str(scraper), "--days", "1")
        (tmp_path / "prometheus.yml").write_text(
            SCRAPE.format(
                port=metrics_port,
                token=tmp_path / "admin.token",
                ca=srv.data_dir / "ca.crt",
                api_port=urlsplit(srv.api).port,
                scraper=scraper,
                tls_port=tls_port,
            )
        )
        with open(tmp_path / "prometheus.log", "ab") as log:
            prometheus = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield srv, tmp_path, f"http://127.0.0.1:{prom_port}"
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def eventually(prometheus: str, expr: str, seconds: float = 60) -> list[dict[str, Any]]:
    """The query's result once it is non-empty (Prometheus scrapes every second)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = query(prometheus, expr)
        except httpx.HTTPError:
            result = []  # Prometheus still starting
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_the_api_and_the_agent(platform: tuple[Server, Path, str]) -> None:
    srv, tmp, prometheus = platform
    up = eventually(prometheus, 'up{job="hangar"} == 1')
    assert len(up) == 1, (tmp / "prometheus.log").read_text()[-2000:]

    # A deploy: the API, the deployer and the agent each count their part.
    config = write_config(tmp, "good.toml")
    config.write_text(config.read_text() + '[metrics]\n  port = 8080\n  path = "/metrics"\n')
    srv.cli("deploy", "--config", str(config))
    trust = ssl.create_default_context(cafile=str(srv.data_dir / "ca.crt"))
    refused = httpx.get(
        f"{srv.api}/v1/apps", headers={"Authorization": "Bearer nope"}, verify=trust, timeout=10
    )
    assert refused.status_code == 401

    complete = eventually(prometheus, 'hangar_releases_total{job="hangar",outcome="complete"} >= 1')
    assert len(complete) == 1
    # Over mutual TLS: the scraper's certificate is let in, a Prometheus without one is not.
    assert eventually(prometheus, 'hangar_releases_total{job="hangar-tls",outcome="complete"} >= 1')
    assert eventually(prometheus, 'up{job="hangar-tls-anonymous"} == 0')
    assert not query(prometheus, 'up{job="hangar-tls-anonymous"} == 1')
    running = eventually(prometheus, 'hangar_machines{job="hangar",state="running"} == 1')
    assert len(running) == 1 and running[0]["metric"]["org"].startswith("org_")
    # The machine's own cgroup: memory in use, processes, CPU time.
    memory = eventually(prometheus, 'hangar_machine_memory_bytes{job="hangar",app="hello"} > 0')
    assert len(memory) == 1
    assert eventually(prometheus, 'hangar_machine_pids{job="hangar",app="hello"} >= 1')
    assert eventually(prometheus, "hangar_machine_start_seconds_count >= 1")
    assert eventually(prometheus, 'hangar_health_checks_total{result="passing"} >= 1')
    # The API by route template, never by raw path; the refused token counted.
    posted = eventually(
        prometheus, 'hangar_api_requests_total{route="/v1/apps/{app}/releases",method="POST"}'
    )
    assert posted and all(r["metric"]["status"].startswith("2") for r in posted)
    assert eventually(prometheus, "hangar_api_auth_failures_total >= 1")
    assert eventually(prometheus, 'hangar_api_request_duration_seconds_count{route="/v1/apps"}')
    # The server verifies every audit chain on its own: the system's and the organization's.
    org = running[0]["metric"]["org"]
    verified = eventually(
        prometheus, f'hangar_audit_chain_verified{{job="hangar",chain="{org}"}} == 1'
    )
    assert len(verified) == 1
    assert eventually(prometheus, 'hangar_audit_chain_verified{chain="system"} == 1')
    assert not query(prometheus, "hangar_audit_chain_verified == 0")
    assert eventually(prometheus, "hangar_audit_chain_verified_timestamp_seconds > 0")

    # The app's own metrics, scraped by its host over the private network, read
    # by a member of its organization through the API, and by Prometheus too.
    (machine,) = srv.json("machines", "list", "--app", "hello")  # type: ignore[misc]
    hello = eventually(prometheus, 'hello_up{job="acme",app="hello"} == 1')
    assert len(hello) == 1 and hello[0]["metric"]["machine"] == machine["id"]
    assert eventually(prometheus, 'hangar_machine_memory_bytes{job="acme",app="hello"} > 0')
    # Its traffic through the host, from the host's nftables counters: the scrapes and
    # health checks reached it, and it answered them.
    for direction in ("receive", "transmit"):
        for unit in ("bytes", "packets"):
            name = f"hangar_machine_network_{direction}_{unit}_total"
            assert eventually(prometheus, f'{name}{{job="acme",app="hello"}} > 0'), name
    figures = srv.json("metrics", "--app", "hello")
    assert isinstance(figures, dict) and figures["edge"] == []  # this server runs no edge
    (mine,) = figures["machines"]
    assert mine["scrape_ok"] is True and mine["app_series"] >= 1 and mine["memory_bytes"] > 0
    assert mine["rx_bytes"] > 0 and mine["tx_packets"] > 0
    table = srv.cli("metrics", "--app", "hello").stdout
    assert machine["id"] in table and " ok " in table and " pkts" in table
