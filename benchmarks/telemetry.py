"""What telemetry costs: API throughput with metrics on and off; log lines shipped to a sink.

API: starts ``hangar server run`` (SQLite, one worker, TLS, no agent) twice
on one installation, one at a time: with ``--metrics-port 0`` (no
per-request accounting) and with metrics on a loopback port, scraped once a
second as a Prometheus would. Drives ``GET /v1/apps`` (authenticated) with
wrk over HTTPS keep-alive, alternating off and on for ``--rounds`` rounds,
and prints the median requests/s of each and their ratio.

Logs: a machine's output written as fast as it can be to its log file (the
baseline), against the same lines written and then shipped by the control
plane's log shipper (disk buffer, fsync, push) to a Loki-like receiver on
loopback, in the same run; lines/s of each and their ratio.

Usage: python benchmarks/telemetry.py [--seconds 10] [--connections 8] [--rounds 3]
                                      [--lines 20000] [--quick]
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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


class _Receiver(BaseHTTPRequestHandler):
    """Loki's push API, as far as counting what arrives."""

    lines = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).lines += sum(len(s["values"]) for s in body["streams"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def ship_logs(lines: int) -> dict[str, float]:
    """Lines/s written to a machine's log file, and written then shipped to a sink."""
    import datetime as dt

    from hangar.audit.log import AuditContext
    from hangar.auth.tokens import new_id
    from hangar.config.settings import ServerSettings
    from hangar.controlplane.bootstrap import init_server
    from hangar.controlplane.logshipper import LogShipper
    from hangar.controlplane.logsinks import add_sink
    from hangar.controlplane.machines import create_machine, register_local_host
    from hangar.controlplane.state import ControlPlane
    from hangar.store.tables import App, Org
    from hangar.telemetry.logfiles import RotatingLog, read_all, read_since

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-logs-"))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    settings = ServerSettings(
        data_dir=work / "data", allowed_log_sink_hosts=["127.0.0.1"], metrics_port=0
    )
    init_server(settings, org_name="bench", admin_email="bench@example.com", token_ttl=None)
    cp = ControlPlane.open(settings)
    try:
        with cp.db.write() as session:
            host = register_local_host(session, name="bench", region="local").id
            org = session.query(Org).one()
            app = App(id=new_id("app"), org_id=org.id, name="bench", created_by="bench")
            app.created_at = dt.datetime.now(dt.UTC)
            session.add(app)
            session.flush()
            machine = create_machine(session, app, 1, "local").id
        payload = b"GET /patients/123 200 12ms " + b"x" * 60

        def write(path: Path) -> float:
            log = RotatingLog(path, max_bytes=1 << 30)
            started = time.perf_counter()
            for _ in range(lines):
                log.write("stdout", payload)
            log.close()
            return time.perf_counter() - started

        file_seconds = write(work / "baseline.log")
        output = work / "machine.log"

        class Host:
            host_id = host

            def logs(self, machine_id: str) -> list[dict[str, Any]]:
                return read_all(output) if machine_id == machine else []

            def logs_since(
                self, machine_id: str, cursor: dict[str, int] | None, budget: int
            ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
                return read_since(output, cursor, budget)

        cp.local = Host()  # type: ignore[assignment]
        ctx = AuditContext(actor="bench", token_id=None, request_id=None, client_addr=None)
        add_sink(cp, ctx, org, "loki", f"http://127.0.0.1:{receiver.server_port}")
        shipper = LogShipper(cp)
        started = time.perf_counter()
        write(output)
        while _Receiver.lines < lines:
            shipper.round()
        sink_seconds = time.perf_counter() - started
    finally:
        cp.close()
        receiver.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "file_lps": lines / file_seconds,
        "sink_lps": lines / sink_seconds,
        "line_bytes": float(len(payload)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=20000, help="log lines shipped")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.connections, args.rounds, args.lines = 1, 2, 1, 500
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
    logs = ship_logs(args.lines)
    log_ratio = logs["sink_lps"] / logs["file_lps"]
    if args.json:
        print(
            json.dumps(
                {
                    "runs": runs,
                    "off_rps": off,
                    "on_rps": on,
                    "ratio": ratio,
                    **logs,
                    "log_ratio": log_ratio,
                },
                indent=2,
            )
        )
    else:
        print(f"{'':22}{'metrics off':>14}{'metrics on':>14}{'ratio':>8}{'target':>10}")
        print(f"{'GET  /v1/apps (auth)':22}{off:>12.0f}/s{on:>12.0f}/s{ratio:>8.2f}{'>= 0.95':>10}")
        print(
            f"median of {args.rounds} round(s), off and on alternating; {args.connections} "
            f"connections, {args.seconds}s each, one server worker, HTTPS keep-alive; "
            "metrics scraped every second while on"
        )
        print()
        print(f"{'':22}{'to a file':>14}{'to a sink':>14}{'ratio':>8}")
        print(
            f"{'log lines/s':22}{logs['file_lps']:>12.0f}/s{logs['sink_lps']:>12.0f}/s"
            f"{log_ratio:>8.2f}"
        )
        print(
            f"{args.lines} lines of {logs['line_bytes']:.0f} bytes; the sink: written, "
            "buffered on disk (fsync) and pushed to a Loki-like receiver on loopback"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
