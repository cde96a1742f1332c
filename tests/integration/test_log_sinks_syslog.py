"""Syslog over TLS (RFC 5425) to a real receiver: Debian's rsyslog with its
GnuTLS stream driver, started on loopback with a certificate from a test CA."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import Org
from hangar.telemetry.metrics import REGISTRY
from hangar.telemetry.sinkbuffer import SinkBuffer
from tests.conftest import Installation
from tests.integration.test_log_sinks import (
    Output,
    clock,
    installation,
    one_machine,
    output,
    shipper,
    sink_buffer_bytes,
)

__all__ = [  # fixtures, shared
    "clock",
    "installation",
    "one_machine",
    "output",
    "shipper",
    "sink_buffer_bytes",
]

pytestmark = pytest.mark.skipif(
    shutil.which("rsyslogd") is None, reason="rsyslog is not installed (scripts/apt-deps.sh)"
)


def _cert(tmp: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syslog test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rsyslog:
    def __init__(self, tmp: Path) -> None:
        tmp.mkdir()
        _cert(tmp)
        self.port = _free_port()
        self.out = tmp / "received.log"
        (tmp / "work").mkdir()
        conf = tmp / "rsyslog.conf"
        conf.write_text(
            f"""
global(workDirectory="{tmp / "work"}"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{tmp / "ca.pem"}"
       DefaultNetstreamDriverCertFile="{tmp / "cert.pem"}"
       DefaultNetstreamDriverKeyFile="{tmp / "key.pem"}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="anon")
input(type="imtcp" port="{self.port}" address="127.0.0.1" ruleset="hangar")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="hangar") {{
  action(type="omfile" file="{self.out}" template="raw")
}}
"""
        )
        with open(tmp / "rsyslogd.err", "wb") as err:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(conf), "-i", str(tmp / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError((tmp / "rsyslogd.err").read_text())

    def lines(self, want: int) -> list[str]:
        deadline = time.monotonic() + 30  # rsyslog writes asynchronously
        got: list[str] = []
        while time.monotonic() < deadline:
            got = self.out.read_text().splitlines() if self.out.exists() else []
            if len(got) >= want:
                break
            time.sleep(0.1)
        return got

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def rsyslog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rsyslog]:
    receiver = Rsyslog(tmp_path / "rsyslog")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "rsyslog" / "ca.pem"))
    yield receiver
    receiver.stop()


MESSAGE = re.compile(
    r'^<(\d+)>1 (\S+) (\S+) (\S+) - (\S+) \[hangar@32473 org="acme"(?: app="(\w+)")?'
    r'(?: machine="(\S+)")? stream="(\w+)"\] (.*)$'
)


def test_lines_and_audit_reach_rsyslog_over_tls_as_rfc5424(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    output: Output,
    rsyslog: Rsyslog,
    shipper: LogShipper,
) -> None:
    made = api.post(
        "/v1/orgs/acme/log-sinks",
        headers=installation.headers,
        json={"kind": "syslog", "url": f"tls://localhost:{rsyslog.port}"},
    )
    assert made.status_code == 201, made.text
    output.write(9)
    shipper.round()
    got = [MESSAGE.match(line) for line in rsyslog.lines(10)]
    assert all(got), rsyslog.lines(10)
    parsed = [m.groups() for m in got if m]
    audit = [p for p in parsed if p[4] == "audit"]
    machine = [p for p in parsed if p[4] != "audit"]
    assert [p[8] for p in machine] == [f"line {n} " for n in range(9)]  # in order
    assert {p[4] for p in machine} == {"stdout", "stderr"}
    for pri, _, host, app, stream, *_ in machine:
        assert int(pri) == (11 if stream == "stderr" else 14) and app == "web"
        assert host.startswith("m_")
    (event,) = audit
    assert int(event[0]) == 13 * 8 + 6 and '"action":"logs.sink.add"' in event[8].replace(
        "\\\\", ""
    )


def test_a_syslog_sink_must_be_tls_and_trusted(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    output: Output,
    rsyslog: Rsyslog,
    monkeypatch: pytest.MonkeyPatch,
    shipper: LogShipper,
) -> None:
    for url in (f"http://localhost:{rsyslog.port}", f"tls://localhost:{rsyslog.port}/x"):
        refused = api.post(
            "/v1/orgs/acme/log-sinks",
            headers=installation.headers,
            json={"kind": "syslog", "url": url},
        )
        assert refused.status_code == 422, refused.text
    api.post(
        "/v1/orgs/acme/log-sinks",
        headers=installation.headers,
        json={"kind": "syslog", "url": f"tls://localhost:{rsyslog.port}"},
    )
    monkeypatch.delenv("SSL_CERT_FILE")  # the receiver's CA is no longer trusted
    output.write(3)
    shipper.round()
    sink = api.get("/v1/orgs/acme/log-sinks", headers=installation.headers).json()[0]["id"]
    with control_plane.db.read() as session:
        org = session.execute(select(Org.id).where(Org.name == "acme")).scalar_one()
    failures = REGISTRY.get_sample_value(
        "hangar_log_sink_failures_total", {"org": org, "sink": sink}
    )
    assert failures == 1  # the handshake failed: nothing was sent, all of it waits
    assert (
        len(SinkBuffer(control_plane.data_dir / "log-sinks" / sink / "buffer", 1 << 20).peek(99))
        == 3 + 1
    )
