"""Proof of control from the command line: import, see the TXT record to publish, verify.

`hangar server run` (no agent) asks a local DNS server for the proof, as it
would the operator's resolver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib.server import DNSServer

from hangar.crypto.ca import InternalCA
from tests.e2e.test_cli_flow import Server, free_port, init, login, start, stop
from tests.integration.test_hostname_proof import Zone, _Quiet

pytestmark = pytest.mark.slow

NAME = "clinic-portal.example"


@pytest.fixture
def zoned(tmp_path: Path) -> Iterator[tuple[Server, Zone]]:
    zone = Zone()
    dns = DNSServer(zone, address="127.0.0.1", port=0, logger=_Quiet())
    dns.start_thread()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir, token_file = tmp_path / "data", tmp_path / "admin.token"
    init(data_dir, token_file, env)
    port_of_dns = dns.server.server_address[1]
    (data_dir / "server.toml").write_text(f'dns_proof_resolver = "127.0.0.1:{port_of_dns}"\n')
    port = free_port()
    proc = start(data_dir, env, port)
    srv = Server(data_dir, f"https://127.0.0.1:{port}", token_file.read_text().strip(), env, proc)
    try:
        login(srv)
        yield srv, zone
    finally:
        stop(srv.process)
        dns.stop()
        dns.server.server_close()


def test_an_imported_name_is_held_once_its_txt_record_is_found(
    zoned: tuple[Server, Zone], tmp_path: Path
) -> None:
    srv, zone = zoned
    srv.cli("apps", "create", "web")
    ca = InternalCA.create("anyone")
    cert, key = ca.issue_server_cert([NAME], days=30)
    (tmp_path / "chain.pem").write_text(cert.decode() + ca.pem())
    (tmp_path / "key.pem").write_text(key.decode())
    srv.cli(
        "certs", "import", NAME, "--app", "web",
        "--fullchain", str(tmp_path / "chain.pem"), "--private-key", str(tmp_path / "key.pem"),
    )  # fmt: skip
    shown = srv.cli("certs", "show", NAME, "--app", "web").stdout
    assert "control not proven" in shown and f"_hangar-challenge.{NAME}" in shown
    data = srv.json("certs", "show", NAME, "--app", "web")
    assert isinstance(data, dict) and data["proven"] is False
    token = str(data["proof"]).split('"')[1]
    # Not published yet: refused, with what to do.
    early = srv.cli("certs", "verify", NAME, "--app", "web", check=False)
    assert early.returncode != 0 and "no TXT record" in early.stderr
    zone.txt[f"_hangar-challenge.{NAME}"] = [token]
    done = srv.cli("certs", "verify", NAME, "--app", "web").stdout
    assert "yes: control proven" in done
