"""Machine start: Hangar's API create → started with its http check passing,
against raw ``runc run`` of an identical bundle to the first byte of an HTTP
response, both measured here in the same run. Also: a rolling deploy of 10,
with HTTPS requests going through the edge all along.

    sudo .venv/bin/python benchmarks/machine_start.py [--machines 20] [--rolling 10] [--quick]

The raw baseline runs the very bundle Hangar wrote for one of its machines
(same runc, same hardening, same network hook), with only its id, cgroup and
address changed. Targets here: ratio <= 2, Hangar p50 <= 1 s.

The rolling deploy replaces one machine at a time: out of the edge's
rotation, ``drain_timeout`` (0.2 s here) to finish its requests, SIGTERM
(the app exits on it: its init forwards it), the new machine started and
its check passing. Its time per machine is printed against the raw runc
start (the ratio), with the requests the edge answered meanwhile and how
many failed. Target: under 1 s per machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from _support import build_example_image, free_port, init_installation, start_server
from hangar.cli.images import layout_tar
from hangar.images.oci import ImageRef, read_manifest

CONFIG = """
app = "bench"
kill_signal = "SIGTERM"
kill_timeout = "2s"
[env]
  RELEASE = "{release}"
[http_service]
  internal_port = 8080
  [[http_service.checks]]
    grace_period = "0s"
    interval = "0.05s"
    timeout = "1s"
    path = "/healthz"
[deploy]
  strategy = "rolling"
  max_unavailable = 1
  wait_timeout = "60s"
  drain_timeout = "0.2s"
[[vm]]
  memory = "64mb"
"""


def first_byte(address: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 8080), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if sock.recv(1):
                    return True
        except OSError:
            time.sleep(0.002)
    return False


HOST = "bench.apps.localhost"


class Load:
    """HTTPS requests through the edge, one after another, until stopped: counted."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port, self.ca = port, ca
        self.ok = self.failed = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        # To loopback, naming the app in SNI and Host as a browser would.
        with httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}", verify=ctx, timeout=10
        ) as client:
            while not self.done.is_set():
                try:
                    response = client.get(
                        "/", headers={"Host": HOST}, extensions={"sni_hostname": HOST}
                    )
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.ok += 1
                else:
                    self.failed += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Api:
    def __init__(self, url: str, token: str, ca: Path) -> None:
        self.http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(ca)),
            timeout=30,
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        response = self.http.request(method, path, **kw)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def wait_release(self, version: int, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            release = self.call("GET", f"/v1/apps/bench/releases/{version}")
            if release["status"] in ("complete", "failed"):
                return dict(release)
            time.sleep(0.02)
        raise SystemExit(f"release {version} did not finish in {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=20)
    parser.add_argument("--rolling", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.machines, args.rolling = 2, 2
    if os.geteuid() != 0:
        raise SystemExit("machines run under runc as root: run this as root")

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-", dir="/var/tmp"))
    work.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    build_example_image(work / "image")
    token = init_installation(work, env)
    port, https_port = free_port(), free_port()
    (work / "data/server.toml").write_text(
        f'edge_listen_host = "127.0.0.1"\nedge_http_port = {free_port()}\n'
        f"edge_https_port = {https_port}\nedge_metrics_port = 0\n"
    )
    server = start_server(work, env, port)
    api = Api(f"https://127.0.0.1:{port}", token, work / "data/ca.crt")
    raw_ids: list[str] = []
    try:
        for _ in range(300):
            try:
                api.call("GET", "/v1/healthz")
                break
            except (httpx.HTTPError, SystemExit):
                time.sleep(0.1)
        api.call("POST", "/v1/apps", json={"name": "bench"})
        layout = work / "image"
        manifest = read_manifest(ImageRef("oci", path=layout, tag="latest"))
        image = api.call(
            "POST",
            "/v1/apps/bench/images",
            content=b"".join(layout_tar(layout, manifest)),
            headers={"content-type": "application/octet-stream"},
        )["image"]
        first = api.call(
            "POST",
            "/v1/apps/bench/releases",
            json={"image": image, "config": CONFIG.format(release=1)},
        )
        assert api.wait_release(first["version"])["status"] == "complete"

        # A rolling deploy across exactly `--rolling` machines.
        for _ in range(args.rolling - 1):
            api.call("POST", "/v1/apps/bench/machines")
        for _ in range(3000):
            machines = api.call("GET", "/v1/apps/bench/machines")
            if all(m["healthy"] for m in machines):
                break
            time.sleep(0.02)
        with Load(https_port, work / "data/ca.crt") as load:
            deadline = time.monotonic() + 60
            while load.ok == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # the edge serves the app: start the clock
            before = (load.ok, load.failed)
            started = time.perf_counter()
            rel = api.call(
                "POST",
                "/v1/apps/bench/releases",
                json={"image": image, "config": CONFIG.format(release=2)},
            )
            result = api.wait_release(rel["version"])
            rolling_total = time.perf_counter() - started
            served, failed = load.ok - before[0], load.failed - before[1]
        if result["status"] != "complete":
            raise SystemExit(f"rolling deploy failed: {result['reason']}")

        # Hangar: API create -> started, check passing.
        hangar_times = []
        for _ in range(args.machines):
            started = time.perf_counter()
            machine = api.call("POST", "/v1/apps/bench/machines")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                m = api.call("GET", f"/v1/apps/bench/machines/{machine['id']}")
                if m["state"] == "started" and m["healthy"] is True:
                    break
                if m["state"] == "failed":
                    raise SystemExit(f"machine failed: {m['detail']}")
                time.sleep(0.002)
            else:
                raise SystemExit(
                    f"machine {machine['id']} did not pass its check in 60s: {json.dumps(m)}"
                )
            hangar_times.append(time.perf_counter() - started)

        # Raw runc: the identical bundle, to the first byte of HTTP.
        template_id = api.call("GET", "/v1/apps/bench/machines")[0]["id"]
        template = work / "agent/bundles" / template_id
        config = json.loads((template / "config.json").read_text())
        base_address = ipaddress.IPv6Address(config["hooks"]["createRuntime"][0]["args"][-1])
        raw_root = work / "raw-state"
        raw_times = []
        for i in range(args.machines):
            raw_id = f"raw{i}"
            bundle = work / "raw" / raw_id
            shutil.copytree(template / "files", bundle / "files")
            shutil.copystat(template / "files", bundle / "files")
            os.chown(
                bundle / "files", *(lambda s: (s.st_uid, s.st_gid))((template / "files").stat())
            )
            address = str(base_address + 0x10000 + i)
            cfg = json.loads(json.dumps(config))
            cfg["hostname"] = raw_id
            cfg["linux"]["cgroupsPath"] = f"/hangar-raw/{raw_id}"
            cfg["hooks"]["createRuntime"][0]["args"][-1] = address
            for mount in cfg["mounts"]:
                if str(mount["source"]).startswith(str(template)):
                    mount["source"] = str(bundle / Path(mount["source"]).relative_to(template))
            (bundle / "config.json").write_text(json.dumps(cfg))
            bundle.chmod(0o711)
            (work / "raw").chmod(0o711)
            started = time.perf_counter()
            subprocess.run(
                [
                    "runc",
                    "--root",
                    str(raw_root),
                    "run",
                    "--detach",
                    "--bundle",
                    str(bundle),
                    raw_id,
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            raw_ids.append(raw_id)
            if not first_byte(address, time.monotonic() + 30):
                raise SystemExit(f"raw container {raw_id} never answered")
            raw_times.append(time.perf_counter() - started)
    finally:
        for raw_id in raw_ids:
            subprocess.run(
                ["runc", "--root", str(work / "raw-state"), "delete", "--force", raw_id],
                capture_output=True,
            )
            subprocess.run(["ip", "link", "del", _host_if(raw_id)], capture_output=True)
        try:
            api.call("DELETE", "/v1/apps/bench")
            deadline = time.monotonic() + 60
            machines = work / "agent/state/machines"
            while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            # The edge outlives the server (as machines do): stop it here.
            pidfile = work / "agent/edge/haproxy.pid"
            if pidfile.exists():
                subprocess.run(["kill", pidfile.read_text().split()[0]], capture_output=True)
                time.sleep(0.5)
            log = work / "server.log"
            if sys.exc_info()[0] is not None and log.exists():
                print("server log, last lines:\n" + "\n".join(log.read_text().splitlines()[-30:]))
            for mount in ("edge", "bundles"):
                subprocess.run(["umount", str(work / "agent" / mount)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)

    h50, h95 = statistics.median(hangar_times), percentile(hangar_times, 0.95)
    r50, r95 = statistics.median(raw_times), percentile(raw_times, 0.95)
    print(f"machine start over {args.machines} machines (example app, busybox httpd):")
    print(f"  {'':34}{'p50':>9}{'p95':>9}")
    print(f"  {'raw runc run -> first HTTP byte':34}{r50 * 1000:>7.0f}ms{r95 * 1000:>7.0f}ms")
    print(f"  {'Hangar API create -> check passing':34}{h50 * 1000:>7.0f}ms{h95 * 1000:>7.0f}ms")
    print(f"  ratio (p50) {h50 / r50:.2f}   target <= 2; Hangar p50 target <= 1000 ms")
    per_machine = rolling_total / args.rolling
    print(
        f"rolling deploy of {args.rolling} machines (max_unavailable 1, each health-gated): "
        f"{rolling_total:.1f} s total, {per_machine * 1000:.0f} ms per machine"
    )
    print(
        f"  per machine / raw runc start (p50): {per_machine / r50:.2f}"
        "   target < 1000 ms per machine (drain_timeout 0.2s, app exits on SIGTERM)"
    )
    print(f"  requests through the edge during it: {served} answered 200, {failed} failed")


def _host_if(machine_id: str) -> str:
    from hangar.net.netns import names

    return names(machine_id)[0]


if __name__ == "__main__":
    main()
