"""API throughput with Hangar's metrics on against the same server with them off.

Starts ``hangar server run`` (SQLite, one worker, TLS, no agent) twice on one
installation, one at a time: with ``--metrics-port 0`` (no per-request
accounting) and with metrics on a loopback port, scraped once a second as a
Prometheus would. Drives ``GET /v1/apps`` (authenticated) with wrk over
HTTPS keep-alive, alternating off and on for ``--rounds`` rounds, and prints
the median requests/s of each and their ratio.

Usage: python benchmarks/telemetry.py [--seconds 10] [--connections 8] [--rounds 3] [--quick]
Target: metrics on >= 0.95 of metrics off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _support import HANGAR, free_port, init_installation, wrk

LIST_LUA = """
wrk.headers["Authorization"] = "Bearer {token}"
"""


def start(work: Path, env: dict[str, str], port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    with (work / "server.log").open("ab") as log:
        return subprocess.Popen(
            [
                *HANGAR,
                "server",
                "run",
                "--data-dir",
                str(work / "data"),
                "--listen-port",
                str(port),
                "--agent-listen-port",
                "0",
                "--no-agent",
                "--metrics-port",
                str(metrics_port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_up(url: str, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            httpx.get(url, verify=context, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def measure(
    work: Path, env: dict[str, str], script: Path, size: tuple[int, int], metrics: bool
) -> dict[str, float]:
    """One wrk run against a fresh server; with metrics, a scraper asks every second."""
    port, metrics_port = free_port(), (free_port() if metrics else 0)
    proc = start(work, env, port, metrics_port)
    stop = threading.Event()
    scrapes: list[int] = []

    def scrape() -> None:
        while not stop.wait(1.0):
            try:
                got = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                scrapes.append(len(got.content))
            except httpx.HTTPError:
                pass

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        wait_up(f"https://127.0.0.1:{port}/v1/healthz", work / "data" / "ca.crt", proc)
        if metrics:
            scraper.start()
        return wrk(f"https://127.0.0.1:{port}/v1/apps", *size, script=script)
    finally:
        stop.set()
        if metrics:
            scraper.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections, args.rounds = 1, 2, 1
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make deps` (Debian package wrk)")

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-telemetry-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    token = init_installation(work, env)
    script = work / "list.lua"
    script.write_text(LIST_LUA.format(token=token))
    size = (args.seconds, args.connections)
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        runs["off"].append(measure(work, env, script, size, metrics=False))
        runs["on"].append(measure(work, env, script, size, metrics=True))
    failed = [k for k, rs in runs.items() for r in rs if r["non_2xx"] or r["errors"]]
    if failed:
        print(
            f"error: runs with metrics {', '.join(sorted(set(failed)))} had non-2xx responses "
            f"or socket errors; server output: {work / 'server.log'}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    off = statistics.median(r["rps"] for r in runs["off"])
    on = statistics.median(r["rps"] for r in runs["on"])
    ratio = on / off
    if args.json:
        print(json.dumps({"runs": runs, "off_rps": off, "on_rps": on, "ratio": ratio}, indent=2))
    else:
        print(f"{'':22}{'metrics off':>14}{'metrics on':>14}{'ratio':>8}{'target':>10}")
        print(f"{'GET  /v1/apps (auth)':22}{off:>12.0f}/s{on:>12.0f}/s{ratio:>8.2f}{'>= 0.95':>10}")
        print(
            f"median of {args.rounds} round(s), off and on alternating; {args.connections} "
            f"connections, {args.seconds}s each, one server worker, HTTPS keep-alive; "
            "metrics scraped every second while on"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
