"""Hangar's own metrics: what each part counts, how it is labelled, where it is served."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hangar.agent.metrics import AgentCollector, cgroup_usage
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes import registry
from hangar.agent.runtimes.fake import FakeRuntime
from hangar.agent.service import Agent
from hangar.config.settings import ServerSettings, load_settings
from hangar.contract.assignments import Assignment
from hangar.domain.reconcile import RestartPolicy
from hangar.errors import ConfigError
from hangar.images import store as images_module
from hangar.images.oci import build_layout, layer_tar
from hangar.images.store import ImageStore
from hangar.telemetry.metrics import REGISTRY, check_listen_host, serve_metrics
from tests.conftest import Installation


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def series(name: str) -> list[dict[str, str]]:
    return [s.labels for m in REGISTRY.collect() for s in m.samples if s.name == name]


# the API


def test_requests_are_counted_by_route_template_and_status(api: TestClient) -> None:
    labels = {"listener": "api", "method": "GET", "route": "/v1/apps/{app}"}
    before_404 = sample("hangar_api_requests_total", **labels, status="401")
    before_hist = sample("hangar_api_request_duration_seconds_count", **labels)
    for name in ("one", "two", "three"):
        assert api.get(f"/v1/apps/{name}").status_code == 401
    assert sample("hangar_api_requests_total", **labels, status="401") == before_404 + 3
    assert sample("hangar_api_request_duration_seconds_count", **labels) == before_hist + 3
    # Raw paths never become labels.
    raw = {f"/v1/apps/{name}" for name in ("one", "two", "three")}
    assert not any(s.get("route") in raw for s in series("hangar_api_requests_total"))


def test_random_paths_share_one_series(api: TestClient) -> None:
    before = len(series("hangar_api_requests_total"))
    for n in range(20):
        assert api.get(f"/no/such/{n}/path-{os.urandom(4).hex()}").status_code == 404
    routes = {s["route"] for s in series("hangar_api_requests_total")}
    assert "unmatched" in routes
    assert len(series("hangar_api_requests_total")) <= before + 1


def test_authentication_failures_are_counted(api: TestClient) -> None:
    before = sample("hangar_api_auth_failures_total")
    api.get("/v1/apps", headers={"Authorization": "Bearer not-a-token"})
    api.get("/v1/apps", headers={"Authorization": "Basic abc"})
    api.get("/v1/apps")
    assert sample("hangar_api_auth_failures_total") == before + 3


def test_an_authenticated_request_is_not_an_auth_failure(
    api: TestClient, installation: Installation
) -> None:
    before = sample("hangar_api_auth_failures_total")
    assert api.get("/v1/apps", headers=installation.headers).status_code == 200
    assert sample("hangar_api_auth_failures_total") == before
    ok = {"listener": "api", "method": "GET", "route": "/v1/apps", "status": "200"}
    assert sample("hangar_api_requests_total", **ok) >= 1


# the listener


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.1", "fd00::1", "localhost", "example.com"]
)
def test_the_listener_refuses_any_address_but_loopback(host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        check_listen_host(host)
    with pytest.raises(ConfigError, match="metrics_listen_host"):
        load_settings(
            ServerSettings, flags={"data_dir": tmp_path, "metrics_listen_host": host}, environ={}
        )


def test_the_listener_serves_the_exposition_format_on_loopback() -> None:
    server = serve_metrics("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            body = r.read().decode()
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"hangar_api_requests", "hangar_releases", "hangar_machine_start_seconds"} <= names
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error() -> None:
    server = serve_metrics("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="cannot listen for metrics"):
            serve_metrics("127.0.0.1", server.port)
    finally:
        server.stop()


# the agent


def test_cgroup_v1_usage_is_read(tmp_path: Path) -> None:
    for part, file, value in (
        ("cpuacct", "cpuacct.usage", "2500000000\n"),
        ("memory", "memory.usage_in_bytes", "1048576\n"),
        ("pids", "pids.current", "7\n"),
    ):
        (tmp_path / part / "hangar" / "m-1").mkdir(parents=True)
        (tmp_path / part / "hangar" / "m-1" / file).write_text(value)
    usage = cgroup_usage("m-1", tmp_path)
    assert usage is not None
    assert (usage.cpu_seconds, usage.memory_bytes, usage.pids) == (2.5, 1048576, 7)
    assert cgroup_usage("m-2", tmp_path) is None


def test_cgroup_v2_usage_is_read(tmp_path: Path) -> None:
    machine = tmp_path / "hangar" / "m-1"
    machine.mkdir(parents=True)
    (machine / "cgroup.procs").write_text("1\n")
    (machine / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1\n")
    (machine / "memory.current").write_text("4096\n")
    (machine / "pids.current").write_text("3\n")
    usage = cgroup_usage("m-1", tmp_path)
    assert usage is not None
    assert (usage.cpu_seconds, usage.memory_bytes, usage.pids) == (1.5, 4096, 3)


@pytest.fixture
def reconciler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Reconciler:
    monkeypatch.setattr(images_module, "require_traversable", lambda path: None)
    runtime = registry.create("fake", tmp_path / "state", tmp_path / "bundles")
    images = ImageStore(tmp_path / "images", uid_base=os.getuid())
    return Reconciler(runtime, images, tmp_path / "agent")


def assignment(layout: Path, machine_id: str, org: str, **kw: object) -> Assignment:
    values: dict[str, object] = {
        "machine_id": machine_id,
        "app": "clinic",
        "version": 1,
        "state": "started",
        "image": f"oci:{layout}:latest",
        "org": org,
    }
    values.update(kw)
    return Assignment(**values)  # type: ignore[arg-type]


def test_agent_counts_starts_restarts_and_shows_machines_by_state(
    reconciler: Reconciler, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    build_layout(layout, [layer_tar([])], config={"Entrypoint": ["/bin/app"]})
    org = "org_" + os.urandom(4).hex()  # counters are per process: a fresh label each run
    policy = RestartPolicy("on-failure", max_retries=1, window=1000, base_delay=1)
    wants = [assignment(layout, f"m-{n}", org, restart=policy) for n in range(3)]
    starts = sample("hangar_machine_start_seconds_count")
    t = 1_700_000_000.0
    reconciler.reconcile(wants, t)
    assert sample("hangar_machine_start_seconds_count") == starts + 3
    runtime = reconciler.runtime
    assert isinstance(runtime, FakeRuntime)
    runtime.exit("m-0", 1, at=t)
    reconciler.reconcile(wants, t + 5)
    assert sample("hangar_machine_restarts_total", org=org, app="clinic") == 1
    runtime.exit("m-0", 1, at=t + 6)
    runtime.exit("m-1", 0, at=t + 6)
    reconciler.reconcile(wants, t + 50)  # m-0 gives up: failed

    agent = Agent.__new__(Agent)
    agent.reconciler = reconciler
    agent.mesh_handshakes = {"peerA=": int(time.time()) - 30, "peerB=": 0}
    cgroups = tmp_path / "cgroup"
    (cgroups / "memory" / "hangar" / "m-2").mkdir(parents=True)
    (cgroups / "memory" / "hangar" / "m-2" / "memory.usage_in_bytes").write_text("2048\n")
    (cgroups / "cpuacct" / "hangar" / "m-2").mkdir(parents=True)
    (cgroups / "cpuacct" / "hangar" / "m-2" / "cpuacct.usage").write_text("1000000000\n")
    collector = AgentCollector(agent, cgroups)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in collector.collect()
        for s in m.samples
    }
    assert got[("hangar_machines", (("org", org), ("state", "failed")))] == 1
    assert got[("hangar_machines", (("org", org), ("state", "stopped")))] == 1
    assert got[("hangar_machines", (("org", org), ("state", "running")))] == 1
    labels = (("app", "clinic"), ("machine", "m-2"), ("org", org))
    assert got[("hangar_machine_memory_bytes", labels)] == 2048
    assert got[("hangar_machine_cpu_seconds_total", labels)] == 1.0
    assert 30 <= got[("hangar_mesh_peer_handshake_age_seconds", (("peer", "peerA="),))] < 3600
    assert got[("hangar_mesh_peer_handshake_age_seconds", (("peer", "peerB="),))] == float("inf")


def test_metrics_off_means_no_request_counting(tmp_path: Path) -> None:
    """``metrics_port = 0``: the API does no per-request accounting at all."""
    from hangar.api.app import create_app
    from hangar.api.metrics import MetricsMiddleware
    from hangar.controlplane.state import ControlPlane
    from tests.conftest import make_installation

    install = make_installation(tmp_path / "data", metrics_port=0)
    cp = ControlPlane.open(install.settings)
    try:
        app = create_app(cp)
        assert not any(m.cls is MetricsMiddleware for m in app.user_middleware)
    finally:
        cp.close()
