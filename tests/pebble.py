"""Pebble, the ACME test server, and its DNS, on loopback for the tests that need them.

``pebble-challtestsrv`` answers Pebble's DNS questions: every name is
127.0.0.1 unless a test says otherwise, so Pebble validates HTTP-01
challenges against the edge under test, on the edge's HTTP port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from hangar.crypto.ca import InternalCA

__all__ = ["Pebble", "have_pebble", "pebble"]


def have_pebble() -> bool:
    return shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pebble:
    directory_url: str
    ca_bundle: Path  # trusts Pebble's own HTTPS listener
    management: str
    dns_management: str

    def roots_pem(self) -> str:
        """The root that Pebble signs certificates under (new at each start)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        return httpx.get(f"{self.management}/roots/0", verify=ctx, timeout=10).text

    def set_address(self, host: str, ipv4: str) -> None:
        """Make Pebble's DNS answer ``host`` with ``ipv4``."""
        httpx.post(
            f"{self.dns_management}/add-a",
            json={"host": host, "addresses": [ipv4]},
            timeout=10,
        ).raise_for_status()


@contextlib.contextmanager
def pebble(work: Path, http_port: int) -> Iterator[Pebble]:
    """Pebble validating HTTP-01 on ``http_port`` of 127.0.0.1; stopped on exit."""
    work.mkdir(parents=True, exist_ok=True)
    ca = InternalCA.create("pebble-listener")
    cert, key = ca.issue_server_cert(["localhost", "127.0.0.1"])
    (work / "ca.pem").write_text(ca.pem())
    (work / "cert.pem").write_bytes(cert)
    (work / "key.pem").write_bytes(key)
    acme_port, mgmt_port, dns_port, dns_mgmt = _port(), _port(), _port(), _port()
    (work / "pebble.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{acme_port}",
                    "managementListenAddress": f"127.0.0.1:{mgmt_port}",
                    "certificate": str(work / "cert.pem"),
                    "privateKey": str(work / "key.pem"),
                    "httpPort": http_port,
                    "tlsPort": _port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "challtestsrv.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        "pebble-challtestsrv",
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                        "-dns01",
                        f"127.0.0.1:{dns_port}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-management",
                        f"127.0.0.1:{dns_mgmt}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        with open(work / "pebble.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        "pebble",
                        "-config",
                        str(work / "pebble.json"),
                        "-dnsserver",
                        f"127.0.0.1:{dns_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        found = Pebble(
            directory_url=f"https://localhost:{acme_port}/dir",
            ca_bundle=work / "ca.pem",
            management=f"https://localhost:{mgmt_port}",
            dns_management=f"http://127.0.0.1:{dns_mgmt}",
        )
        ctx = ssl.create_default_context(cafile=str(found.ca_bundle))
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(found.directory_url, verify=ctx, timeout=1).raise_for_status()
                httpx.get(f"{found.dns_management}/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise AssertionError((work / "pebble.log").read_text()) from None
                time.sleep(0.1)
        yield found
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
