"""Edge throughput: Hangar's HAProxy against a hand-written HAProxy and Caddy, one run.

All three terminate TLS on loopback with the same certificate (the edge's
default one; wrk sends no SNI for an address) and proxy to the same backend:
one machine of the example app (busybox httpd in a runc container), deployed
by `hangar server run`. wrk drives each over HTTPS keep-alive; the table
gives requests/s, p50 and p99, and each one's ratio to the hand-written
HAProxy (target: Hangar's ≥ 0.9).

Then the time to apply a routing change with 1,000 apps: a whole new
configuration rendered, checked with `haproxy -c` and reloaded; and a change
of which machines are in rotation (runtime API, no reload).

Run as root: `python benchmarks/edge_throughput.py [--seconds 10]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _support import free_port, init_installation, start_server
from hangar.domain.routing import HttpRoute, RoutingTable, Server, hsts_header
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.tlsprofile import TLS12_CIPHERS, TLS13_SUITES

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
app = "bench"
[http_service]
  internal_port = 8080
  [http_service.concurrency]
    soft_limit = 200
    hard_limit = 250
  [[http_service.checks]]
    grace_period = "0.2s"
    interval = "2s"
    path = "/healthz"
[[vm]]
  memory = "128mb"
"""
HOST = "bench.apps.localhost"


def wrk(url: str, seconds: int, connections: int, host: str | None = None) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(q: str) -> float:
        m = re.search(rf"{q}%\s+([\d.]+)(us|ms|s)", out)
        return float(m.group(1)) * scale[m.group(2)] if m else float("nan")

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(found.group(1)),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
    }


def wait_up(url: str, host: str | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Host": host} if host else {}
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, verify=False, headers=headers, timeout=1).status_code == 200:  # noqa: S501
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200")


def hand_written(work: Path, pem: Path, backend: str, port: int) -> str:
    """The smallest HAProxy config that does the same job, as a person would write it."""
    return f"""global
    ssl-default-bind-ciphers {TLS12_CIPHERS}
    ssl-default-bind-ciphersuites {TLS13_SUITES}
    ssl-default-bind-options no-sslv3 no-tlsv10 no-tlsv11 no-tls-tickets
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend https-in
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
    default_backend app
backend app
    server m1 {backend} maxconn 250
"""


def caddyfile(cert: Path, key: Path, backend: str, port: int) -> str:
    return f"""{{
	admin off
	auto_https off
	default_sni hangar-edge-default
	log {{
		output discard
	}}
}}
https://:{port} {{
	bind 127.0.0.1
	tls {cert} {key}
	reverse_proxy {backend}
}}
"""


def thousand_apps(n: int, up: bool = True, extra: int = 0) -> RoutingTable:
    routes = []
    hsts = hsts_header(63072000, True, False)
    for i in range(n + extra):
        base = int(ipaddress.IPv6Address("fd00:1::")) + (i << 16)
        servers = tuple(
            Server(f"m_{i}_{k}", str(ipaddress.IPv6Address(base + k + 2)), 8080, up or k == 0)
            for k in range(2)
        )
        routes.append(
            HttpRoute(
                app=f"app{i:04d}",
                hostnames=(f"app{i:04d}.apps.example.test", f"www.app{i:04d}.example.test"),
                servers=servers,
                hsts=hsts,
            )
        )
    return RoutingTable(http=tuple(routes))


def routing_change(work: Path, apps: int) -> dict[str, float]:
    directory = Path("/run") / f"hangar-bench-edge-{os.getpid()}"
    edge = Edge(
        EdgeConfig(
            directory=directory,
            bind_host="127.0.0.1",
            http_port=free_port(),
            https_port=free_port(),
        )
    )
    try:
        started = time.perf_counter()
        edge.apply(thousand_apps(apps))
        first = time.perf_counter() - started
        reloads = []
        for extra in range(1, 6):  # one app more each time: a new configuration
            started = time.perf_counter()
            edge.apply(thousand_apps(apps, extra=extra))
            reloads.append(time.perf_counter() - started)
        states = []
        for up in (False, True, False, True, False):  # half the machines in or out
            started = time.perf_counter()
            assert edge.apply(thousand_apps(apps, up=up, extra=5)) is False
            states.append(time.perf_counter() - started)
        return {
            "start_s": first,
            "reload_p50_s": statistics.median(reloads),
            "state_change_p50_s": statistics.median(states),
        }
    finally:
        edge.stop()
        subprocess.run(["umount", str(directory)], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("machines run under runc as root: run this as root")
    for tool in ("wrk", "haproxy", "caddy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make deps`")

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-edge-", dir="/var/tmp"))
    work.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    spec = importlib.util.spec_from_file_location("hello", ROOT / "examples/hello/build.py")
    assert spec is not None and spec.loader is not None
    hello = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hello)
    hello.build(work / "image")
    token = init_installation(work, env)
    port, https_port = free_port(), free_port()
    (work / "data/server.toml").write_text(
        f'edge_listen_host = "127.0.0.1"\nedge_http_port = {free_port()}\n'
        f"edge_https_port = {https_port}\nedge_metrics_port = 0\n"
    )
    server = start_server(work, env, port)
    others: list[subprocess.Popen[bytes]] = []
    api = httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        verify=str(work / "data/ca.crt"),
        timeout=30,
    )
    results: dict[str, Any] = {}
    try:
        wait_up(f"https://127.0.0.1:{port}/v1/healthz")
        api.post("/v1/apps", json={"name": "bench"}).raise_for_status()
        api.post(
            "/v1/apps/bench/releases",
            json={"image": f"oci:{work / 'image'}:latest", "config": CONFIG},
        ).raise_for_status()
        hangar_url = f"https://127.0.0.1:{https_port}/"
        wait_up(hangar_url, HOST, timeout=60)
        (machine,) = api.get("/v1/apps/bench/machines").json()
        backend = f"[{machine['address']}]:8080"

        pem = work / "agent/edge/default.pem"
        text = pem.read_text()
        cut = text.index("-----BEGIN PRIVATE KEY")
        (work / "cert.pem").write_text(text[:cut])
        (work / "key.pem").write_text(text[cut:])
        (work / "key.pem").chmod(0o600)
        shutil.copy(pem, work / "both.pem")

        hand_port, caddy_port = free_port(), free_port()
        (work / "hand.cfg").write_text(hand_written(work, work / "both.pem", backend, hand_port))
        (work / "Caddyfile").write_text(
            caddyfile(work / "cert.pem", work / "key.pem", backend, caddy_port)
        )
        others.append(
            subprocess.Popen(
                ["haproxy", "-db", "-f", str(work / "hand.cfg")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        others.append(
            subprocess.Popen(
                ["caddy", "run", "--config", str(work / "Caddyfile"), "--adapter", "caddyfile"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**env, "HOME": str(work), "XDG_DATA_HOME": str(work / "caddy")},
            )
        )
        hand_url = f"https://127.0.0.1:{hand_port}/"
        caddy_url = f"https://127.0.0.1:{caddy_port}/"
        wait_up(hand_url)
        wait_up(caddy_url)

        # Interleaved, twice each, so a noisy moment does not fall on one only.
        runs: dict[str, list[dict[str, float]]] = {"hangar": [], "haproxy": [], "caddy": []}
        for _ in range(2):
            runs["haproxy"].append(wrk(hand_url, args.seconds, args.connections))
            runs["hangar"].append(wrk(hangar_url, args.seconds, args.connections, HOST))
            runs["caddy"].append(wrk(caddy_url, args.seconds, args.connections))
        for name, got in runs.items():
            results[name] = {
                "rps": statistics.mean(r["rps"] for r in got),
                "p50_ms": statistics.mean(r["p50_ms"] for r in got),
                "p99_ms": statistics.mean(r["p99_ms"] for r in got),
                "non_2xx": sum(r["non_2xx"] for r in got),
                "errors": sum(r["errors"] for r in got),
            }
        base = results["haproxy"]["rps"]
        for name in runs:
            results[name]["ratio_to_hand_written"] = results[name]["rps"] / base
        results["routing_change"] = routing_change(work, args.apps)
    finally:
        for proc in others:
            proc.terminate()
            proc.wait(timeout=10)
        try:
            api.delete("/v1/apps/bench")
            deadline = time.monotonic() + 30
            machines = work / "agent/state/machines"
            while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.2)
        except httpx.HTTPError:
            pass
        server.terminate()
        server.wait(timeout=30)
        pidfile = work / "agent/edge/haproxy.pid"
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().split()[0]], capture_output=True)
            time.sleep(0.5)
        for mount in ("edge", "bundles"):
            subprocess.run(["umount", str(work / "agent" / mount)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"HTTPS keep-alive, {args.connections} connections, {args.seconds}s x2 each, one machine:"
    )
    print(f"{'':26}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}{'errors':>8}")
    for name, label in (
        ("hangar", "Hangar's edge"),
        ("haproxy", "hand-written HAProxy"),
        ("caddy", "Caddy"),
    ):
        r = results[name]
        print(
            f"{label:26}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{r['ratio_to_hand_written']:>8.2f}{r['non_2xx'] + r['errors']:>8.0f}"
        )
    change = results["routing_change"]
    state_ms = change["state_change_p50_s"] * 1000
    print(
        f"\nRouting change with {args.apps} apps: first start {change['start_s']:.2f}s;"
        f" a new configuration (render, haproxy -c, reload) p50 {change['reload_p50_s']:.2f}s;"
        f" machines in/out of rotation (runtime API) p50 {state_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
