"""Edge throughput: Hangar's HAProxy against a hand-written HAProxy and Caddy, one run.

All three terminate TLS on loopback with the same certificate (the edge's
``*.apps.localhost`` one, asked for by SNI as a browser would: wrk resolves the
name from a hosts file of its own) and proxy to the same backend:
one machine (a real runc machine deployed by `hangar server run`) whose
HAProxy answers every request itself with HTTP keep-alive, many times faster
than any of the proxies in front of it. wrk drives each proxy over HTTPS
keep-alive and the backend directly over HTTP keep-alive; the table gives
requests/s, p50 and p99, each proxy's ratio to the hand-written HAProxy
(target: Hangar's >= 0.9), the backend's headroom over the proxies (must be
>= 5, or the ratios measure the backend) and wrk's own CPU (the load
generator must not be the bottleneck either), and the CPU each of wrk, the
proxy and the backend machine used during each run.

Then the time to apply a routing change with 1,000 apps: a whole new
configuration rendered, checked with `haproxy -c` and reloaded; and a change
of which machines are in rotation (runtime API, no reload).

Run as root: `python benchmarks/edge_throughput.py [--seconds 10] [--quick]`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

import _backend_image
from _support import (
    free_port,
    init_installation,
    machine_cpu,
    process_tree_cpu,
    start_server,
    wrk,
)
from hangar.cli.images import layout_tar
from hangar.domain.routing import HttpRoute, RoutingTable, Server, hsts_header
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.images.oci import ImageRef, read_manifest
from hangar.tlsprofile import TLS12_CIPHERS, TLS13_SUITES

CONFIG = f"""
app = "bench"
[http_service]
  internal_port = {_backend_image.PORT}
  [http_service.concurrency]
    soft_limit = 200
    hard_limit = 250
  [[http_service.checks]]
    grace_period = "0.2s"
    interval = "2s"
    path = "/healthz"
[[vm]]
  memory = "256mb"
  cpus = 2
"""
HOST = "bench.apps.localhost"


def wait_up(url: str, host: str | None = None, timeout: float = 30) -> None:
    """Until ``url`` answers 200; ``host``, when given, is sent as SNI and Host."""
    deadline = time.monotonic() + timeout
    headers = {"Host": host} if host else {}
    extensions = {"sni_hostname": host} if host else {}
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with httpx.Client(verify=False, timeout=1) as client:  # noqa: S501
                got = client.get(url, headers=headers, extensions=extensions)
            if got.status_code == 200:
                return
            last = f"{got.status_code} {got.text.strip()[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 (last: {last})")


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


PROXIES = (
    ("hangar", "Hangar's edge"),
    ("haproxy", "hand-written HAProxy"),
    ("caddy", "Caddy"),
)
HEADROOM = 5.0  # the backend must answer at least this many times the proxies' rate
BUSY = 0.9  # wrk using more of its thread's CPU than this may be the bottleneck


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each")
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections, args.rounds, args.apps = 1, 4, 1, 20
    if os.geteuid() != 0:
        raise SystemExit("machines run under runc as root: run this as root")
    for tool in ("wrk", "haproxy", "caddy", "ldd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make deps`")

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-edge-", dir="/var/tmp"))
    work.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    _backend_image.build(work / "image")
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
        layout = work / "image"
        manifest = read_manifest(ImageRef("oci", path=layout, tag="latest"))
        uploaded = api.post(
            "/v1/apps/bench/images",
            content=b"".join(layout_tar(layout, manifest)),
            headers={"content-type": "application/octet-stream"},
        )
        uploaded.raise_for_status()
        api.post(
            "/v1/apps/bench/releases",
            json={"image": uploaded.json()["image"], "config": CONFIG},
        ).raise_for_status()
        hosts_file = work / "hosts"
        hosts_file.write_text(f"127.0.0.1 {HOST}\n")
        urls = {"hangar": f"https://{HOST}:{https_port}/"}
        wait_up(f"https://127.0.0.1:{https_port}/", HOST, timeout=60)
        (machine,) = api.get("/v1/apps/bench/machines").json()
        backend = f"[{machine['address']}]:{_backend_image.PORT}"
        urls["backend"] = f"http://{backend}/"

        # The certificate the edge serves for HOST (in its live configuration).
        pem = sorted(work.glob("agent/edge/conf.*/cert-_wildcard_.apps.localhost.pem"))[-1]
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
        urls["haproxy"] = f"https://{HOST}:{hand_port}/"
        urls["caddy"] = f"https://{HOST}:{caddy_port}/"
        wait_up(urls["backend"])
        for port_ in (hand_port, caddy_port):
            wait_up(f"https://127.0.0.1:{port_}/", HOST)

        edge_pid = int((work / "agent/edge/haproxy.pid").read_text().split()[0])
        proxy_pids = {"hangar": edge_pid, "haproxy": others[0].pid, "caddy": others[1].pid}
        # Interleaved, so a noisy moment does not fall on one only.
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            for name in ("backend", "haproxy", "hangar", "caddy"):
                pid = proxy_pids.get(name)
                before = (machine_cpu(machine["id"]), process_tree_cpu(pid) if pid else 0.0)
                started = time.monotonic()
                one = wrk(
                    urls[name],
                    args.seconds,
                    args.connections,
                    hosts_file=None if name == "backend" else hosts_file,
                )
                wall = time.monotonic() - started
                one["backend_cpu"] = (machine_cpu(machine["id"]) - before[0]) / wall
                one["proxy_cpu"] = (process_tree_cpu(pid) - before[1]) / wall if pid else 0.0
                runs[name].append(one)
        for name, got in runs.items():
            results[name] = {
                "rps": statistics.mean(r["rps"] for r in got),
                "p50_ms": statistics.mean(r["p50_ms"] for r in got),
                "p99_ms": statistics.mean(r["p99_ms"] for r in got),
                "non_2xx": sum(r["non_2xx"] for r in got),
                "errors": sum(r["errors"] for r in got),
                "wrk_cpu": max(r["wrk_cpu"] for r in got),
                "proxy_cpu": statistics.mean(r["proxy_cpu"] for r in got),
                "backend_cpu": statistics.mean(r["backend_cpu"] for r in got),
            }
        base = results["haproxy"]["rps"]
        for name in runs:
            results[name]["ratio_to_hand_written"] = results[name]["rps"] / base
        fastest = max(results[name]["rps"] for name, _ in PROXIES)
        # wrk and the backend share this host's cores when wrk is aimed straight at
        # the backend, so its direct rate understates what the backend can answer.
        # Its rate per CPU-second it used is what one core of it answers.
        direct = results["backend"]
        per_core = direct["rps"] / direct["backend_cpu"] if direct["backend_cpu"] > 0 else 0.0
        results["headroom"] = {
            "over_hangar": direct["rps"] / results["hangar"]["rps"],
            "over_fastest_proxy": direct["rps"] / fastest,
            "backend_rps_per_core": per_core,
            "per_core_over_hangar": per_core / results["hangar"]["rps"],
        }
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
    else:
        report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"wrk -t1 -c{args.connections}, {args.seconds}s x{args.rounds} each, interleaved: through"
        " each proxy over HTTPS keep-alive, straight at the backend machine over HTTP keep-alive"
    )
    print(
        f"{'':28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}{'errors':>8}{'wrk CPU':>9}"
        f"{'proxy CPU':>11}{'backend CPU':>13}"
    )
    rows = (("backend", "backend direct (no proxy)"), *PROXIES)
    for name, label in rows:
        r = results[name]
        ratio, proxy = "", ""
        if name != "backend":
            ratio, proxy = f"{r['ratio_to_hand_written']:.2f}", f"{r['proxy_cpu']:.0%}"
        print(
            f"{label:28}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ratio:>8}"
            f"{r['non_2xx'] + r['errors']:>8.0f}{r['wrk_cpu']:>9.0%}{proxy:>11}"
            f"{r['backend_cpu']:>13.0%}"
        )
    print(
        f"CPU: share of one core over each run ({os.cpu_count()} cores here, shared by wrk, the"
        " proxy and the backend); wrk's is of its one thread"
    )
    hangar = results["hangar"]["ratio_to_hand_written"]
    print(
        f"ratio = req/s over the hand-written HAProxy's; Hangar's edge {hangar:.2f} (target >= 0.9)"
    )
    headroom = results["headroom"]
    print(
        f"backend headroom: {headroom['over_hangar']:.1f}x Hangar's edge (needs >= "
        f"{HEADROOM:.0f}x), {headroom['over_fastest_proxy']:.1f}x the fastest proxy"
    )
    proxied = max(results[name]["backend_cpu"] for name, _ in PROXIES)
    print(
        f"the backend machine used at most {proxied:.0%} of a core behind a proxy, and"
        f" {results['backend']['backend_cpu']:.0%} with wrk straight at it"
    )
    print(
        f"backend capacity: {headroom['backend_rps_per_core']:.0f} req/s per core it uses"
        f" ({headroom['per_core_over_hangar']:.1f}x Hangar's edge with one core)"
    )
    if max(headroom["over_hangar"], headroom["per_core_over_hangar"]) < HEADROOM:
        print(
            f"WARNING: the backend answers less than {HEADROOM:.0f}x the rate of Hangar's edge:"
            " the ratios above may measure the backend, not the edge"
        )
    elif headroom["over_hangar"] < HEADROOM:
        print(
            f"note: wrk straight at the backend shares {os.cpu_count()} cores with it, so the"
            f" direct rate reads low; one core of the backend answers"
            f" {headroom['per_core_over_hangar']:.1f}x the edge's rate"
        )
    elif headroom["over_fastest_proxy"] < HEADROOM:
        print(
            f"note: the fastest proxy comes within {HEADROOM:.0f}x of the backend's rate; if the"
            " backend held it back, Hangar's ratio to it reads high, never low"
        )
    busiest = max(results[name]["wrk_cpu"] for name, _ in rows)
    print(
        f"load generator: wrk used at most {busiest:.0%} of its one thread's CPU in any run, and"
        f" drove the backend at {results['backend']['rps']:.0f} req/s from the same host"
    )
    if busiest > BUSY:
        print(f"WARNING: wrk was busy over {BUSY:.0%} of the time: it may be the bottleneck")
    if any(results[name]["non_2xx"] + results[name]["errors"] for name, _ in rows):
        print("WARNING: some requests failed (errors column): those rates mean little")
    change = results["routing_change"]
    state_ms = change["state_change_p50_s"] * 1000
    print(
        f"\nRouting change with {args.apps} apps: first start {change['start_s']:.2f}s;"
        f" a new configuration (render, haproxy -c, reload) p50 {change['reload_p50_s']:.2f}s;"
        f" machines in/out of rotation (runtime API) p50 {state_ms:.0f} ms"
    )


if __name__ == "__main__":
    main()
