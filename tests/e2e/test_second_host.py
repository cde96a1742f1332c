"""A second host joins with a one-time token and runs machines over mutual TLS.

Both "hosts" run on this machine (their own agent directories, runc state and
address slices), but the second one knows the control plane only through the
agents' mTLS listener, exactly as a separate machine would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import running_server
from tests.e2e.test_cli_flow import HANGAR, Server, free_port, stop
from tests.e2e.test_deploy_flow import page, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="agents run machines as root"),
]
CERT_SECONDS = 45  # renewed after two thirds: 30 s
SSN = "123-45-6789"


@dataclass
class Installation:
    srv: Server
    tmp: Path
    root: Path  # /var/tmp dir holding both agents' directories
    agent_port: int


def wait_for(what: str, predicate: object, timeout: float = 60) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def start_agent(inst: Installation, agent_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(inst.tmp / f"{agent_dir.name}.log", "ab") as log:
        return subprocess.Popen(
            [
                *HANGAR,
                "agent",
                "run",
                "--agent-dir",
                str(agent_dir),
                "--poll",
                "1",
                *(() if "--metrics-port" in args else ("--metrics-port", "0")),
                *args,
            ],
            env=inst.srv.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def hosts(srv: Server) -> dict[str, dict[str, object]]:
    return {h["name"]: h for h in srv.json("hosts", "list")}  # type: ignore[union-attr]


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[Installation]:
    """The server's own agent in ``a``; a second host's goes in ``b``."""
    agent_port = free_port()
    options = ("--agent-listen-port", str(agent_port), "--no-edge")
    toml = f"host_cert_seconds = {CERT_SECONDS}\n"
    with running_server(tmp_path, "2host", *options, server_toml=toml, agent="a") as (srv, root):
        try:
            yield Installation(srv, tmp_path, root, agent_port)
        finally:
            srv.cli("apps", "destroy", "hello", "--yes", check=False)
            machines = root / "b/state/machines"
            deadline = time.monotonic() + 30
            while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.2)
            subprocess.run(["umount", str(root / "b/bundles")], capture_output=True)


def agent_client(inst: Installation, cert: Path | None, key: Path | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(inst.srv.data_dir / "ca.crt"))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return httpx.Client(base_url=f"https://127.0.0.1:{inst.agent_port}", verify=context, timeout=10)


def foreign_cert(directory: Path) -> tuple[Path, Path]:
    """A client certificate from a CA that is not the installation's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host_0000000000000000")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("hangar://host/host_0000000000000000")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "foreign.crt", directory / "foreign.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_second_host_joins_runs_machines_renews_and_leaves(installation: Installation) -> None:
    inst = installation
    srv, tmp = inst.srv, inst.tmp
    local = next(iter(hosts(srv)))
    made = srv.json("hosts", "join-token", "--name", "host-b", "--expires", "5m")
    token = str(made["token"])  # type: ignore[index]

    # A token with a wrong secret, or one pinning another CA, buys nothing.
    parts = token.split(".")
    forged = ".".join([parts[0], parts[1], "A" * 43, parts[3]])
    bad = start_agent(inst, inst.root / "x", "--api", srv.api, "--join", forged)
    assert bad.wait(timeout=60) != 0
    assert "the join token is not valid" in (tmp / "x.log").read_text()
    wrong_pin = ".".join([*parts[:3], "0" * 64])
    bad = start_agent(inst, inst.root / "y", "--api", srv.api, "--join", wrong_pin)
    assert bad.wait(timeout=60) != 0
    assert "does not match the join token's pin" in (tmp / "y.log").read_text()

    agent_b = start_agent(inst, inst.root / "b", "--api", srv.api, "--join", token)
    try:
        wait_for("host-b to join and report", lambda: "host-b" in hosts(srv))
        identity = inst.root / "b/identity"
        assert oct((identity / "host.key").stat().st_mode & 0o777) == "0o600"
        assert oct(identity.stat().st_mode & 0o777) == "0o700"

        # The token was for one host only.
        again = start_agent(inst, inst.root / "z", "--api", srv.api, "--join", token)
        assert again.wait(timeout=60) != 0
        assert "already used" in (tmp / "z.log").read_text()

        # The agents' listener: no certificate, or another CA's, gets no TLS session;
        # the public API has no agents' routes at all.
        with pytest.raises(httpx.HTTPError):
            agent_client(inst, None, None).get("/agent/v1/assignments")
        with pytest.raises(httpx.HTTPError):
            agent_client(inst, *foreign_cert(tmp)).get("/agent/v1/assignments")
        trust = ssl.create_default_context(cafile=str(srv.data_dir / "ca.crt"))
        public = httpx.get(f"{srv.api}/agent/v1/assignments", verify=trust, timeout=10)
        assert public.status_code == 404

        # Place on host-b only: its machine is fetched, started and health-checked there.
        srv.cli("hosts", "cordon", local)
        canary = "canary-" + secrets.token_hex(16)
        srv.cli("secrets", "set", "API_KEY=-", "--app", "hello", stdin=canary)
        out = srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
        assert "Release v1 is live." in out.stdout
        (machine,) = srv.json("machines", "list", "--app", "hello")  # type: ignore[misc]
        assert machine["host"] == "host-b" and machine["state"] == "started"
        assert machine["healthy"] is True
        assert b"Hello from Hangar" in page(str(machine["address"]))
        assert (inst.root / "b/state/machines" / str(machine["id"])).exists()
        assert not (inst.root / "a/state/machines" / str(machine["id"])).exists()

        # Its output is shipped up by host-b's agent: `hangar logs` shows the request.
        def logged() -> list[dict[str, object]]:
            out = srv.cli("logs", "--app", "hello", "--json").stdout
            return [json.loads(line) for line in out.splitlines()]

        wait_for(
            "host-b's agent to ship the machine's output",
            lambda: any("response:200" in str(r["line"]) for r in logged()),
        )
        assert {r["machine"] for r in logged()} == {machine["id"]}
        # The secret reached the machine on host-b (sealed on the way), and nothing else there.
        probe = 'case "$API_KEY" in canary-*) echo ${#API_KEY};; esac'
        inside = srv.cli(
            "machines", "exec", str(machine["id"]), "--app", "hello", "--", "sh", "-c", probe
        )
        assert inside.stdout.strip() == str(len(canary))
        b_files = [
            p
            for p in (inst.root / "b").rglob("*")
            if p.is_file() and inst.root / "b/bundles" not in p.parents
        ]
        for path in [
            *b_files,
            tmp / "b.log",
            Path(f"/proc/{agent_b.pid}/environ"),
            Path(f"/proc/{agent_b.pid}/cmdline"),
        ]:
            assert canary.encode() not in path.read_bytes(), path
        # exec reaches it through host-b's agent, which picks the command up on its poll.
        remote = srv.cli("machines", "exec", str(machine["id"]), "--app", "hello", "--", "id")
        assert "uid=1000(app)" in remote.stdout  # the image's user, inside the machine
        stopped_elsewhere = srv.cli(
            "machines", "exec", "m_0000000000000000", "--app", "hello", "--", "id", check=False
        )
        assert stopped_elsewhere.returncode != 0 and "not found" in stopped_elsewhere.stderr
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        pinned = str(release["image_digest"])
        assert (inst.root / "b/images" / pinned.replace(":", "-") / "rootfs").is_dir()

        # Renewal: after two thirds of its lifetime the agent has a new certificate,
        # and once it uses it the old one is refused (by the store, after TLS).
        old_cert, old_key = tmp / "old.crt", tmp / "old.key"
        shutil.copy(identity / "host.crt", old_cert)
        shutil.copy(identity / "host.key", old_key)
        with agent_client(inst, old_cert, old_key) as old:
            assert old.get("/agent/v1/assignments").status_code == 200
            wait_for(
                "the certificate to be renewed",
                lambda: (identity / "host.crt").read_bytes() != old_cert.read_bytes(),
                timeout=CERT_SECONDS + 30,
            )
            seen = hosts(srv)["host-b"]["last_seen"]
            wait_for(
                "a report with the new certificate",
                lambda: hosts(srv)["host-b"]["last_seen"] != seen,
            )
            refused = old.get("/agent/v1/assignments")
        assert refused.status_code == 403
        # Renewed once (maybe twice by now), not on every round.
        renewals = (tmp / "b.log").read_text().count("renewed this host's certificate")
        assert 1 <= renewals <= 2
        assert "no longer accepted" in refused.json()["detail"]

        # A host with machines cannot be removed; once they are gone it can,
        # and its agent is turned away at once.
        busy = srv.cli("hosts", "remove", "host-b", "--yes", check=False)
        assert busy.returncode != 0 and "still has 1 machine" in busy.stderr
        srv.cli("machines", "destroy", str(machine["id"]), "--app", "hello", "--yes", "--force")
        wait_for(
            "the machine to be gone from host-b",
            lambda: not srv.json("machines", "list", "--app", "hello"),
        )
        srv.cli("hosts", "remove", "host-b", "--yes")
        assert agent_b.wait(timeout=30) == 3
        assert "no longer accepts this host" in (tmp / "b.log").read_text()
        assert hosts(srv)["host-b"]["state"] == "removed"
        assert not any((inst.root / "b/state/machines").iterdir())
    finally:
        stop(agent_b)


def test_an_edge_host_serves_apps_with_the_tables_it_is_given(installation: Installation) -> None:
    """A host joined as an edge runs HAProxy from the table the control plane seals to it."""
    from tests.edge_client import EdgeConnection

    inst = installation
    srv, tmp = inst.srv, inst.tmp
    local = next(iter(hosts(srv)))
    srv.cli("hosts", "cordon", local)
    made = srv.json("hosts", "join-token", "--name", "edge-b", "--edge", "--expires", "5m")
    https_port, http_port = free_port(), free_port()
    agent_b = start_agent(
        inst,
        inst.root / "b",
        "--api",
        srv.api,
        "--join",
        str(made["token"]),  # type: ignore[index]
        "--edge",
        "--edge-listen-host",
        "127.0.0.1",
        "--edge-http-port",
        str(http_port),
        "--edge-https-port",
        str(https_port),
        "--edge-metrics-port",
        str(free_port()),
    )
    try:
        wait_for("edge-b to join", lambda: "edge-b" in hosts(srv))
        assert hosts(srv)["edge-b"]["edge"] is True
        out = srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
        assert "Release v1 is live." in out.stdout
        (machine,) = srv.json("machines", "list", "--app", "hello")  # type: ignore[misc]
        assert machine["host"] == "edge-b"
        ctx = ssl.create_default_context(cafile=str(srv.data_dir / "ca.crt"))

        def served() -> bool:
            conn = EdgeConnection("hello.apps.localhost", https_port, ctx)
            try:
                conn.request("GET", "/", headers={"Host": "hello.apps.localhost"})
                response = conn.getresponse()
                return response.status == 200 and b"Hello from Hangar" in response.read()
            except OSError:
                return False
            finally:
                conn.close()

        wait_for("edge-b to serve the app", served)
        conn = EdgeConnection("hello.apps.localhost", https_port, ctx)
        try:
            conn.request("GET", f"/records?ssn={SSN}", headers={"Host": "hello.apps.localhost"})
            conn.getresponse().read()
        finally:
            conn.close()

        # Its access lines come up with its reports, without the query string.
        def access_lines() -> list[dict[str, str]]:
            out = srv.cli("logs", "--app", "hello", "--stream", "access", "--json").stdout
            return [json.loads(line) for line in out.splitlines() if line.strip()]

        wait_for(
            "edge-b's access lines", lambda: any("/records" in r["line"] for r in access_lines())
        )
        edge_id = hosts(srv)["edge-b"]["id"]
        lines = access_lines()
        assert {r["machine"] for r in lines} == {f"edge:{edge_id}"}
        assert SSN not in json.dumps(lines) and "ssn" not in json.dumps(lines)
        found = subprocess.run(
            ["grep", "-rl", "--", SSN, str(srv.data_dir), str(inst.root)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.stdout == "", found.stdout

        # Its figures of the app (HAProxy's exporter, read by edge-b's agent), for `hangar metrics`.
        def edge_figures() -> list[dict[str, object]]:
            return srv.json("metrics", "--app", "hello")["edge"]  # type: ignore[index,no-any-return]

        wait_for("edge-b's figures", lambda: any(e["requests"] for e in edge_figures()))
        (figures,) = edge_figures()
        assert figures["edge"] == "edge-b"
        assert figures["responses"]["2xx"] >= 1  # type: ignore[index]
        table = srv.cli("metrics", "--app", "hello").stdout
        assert "edge-b" in table and "2xx:" in table
        # Its keys sit only on its tmpfs.
        mounts = Path("/proc/self/mounts").read_text()
        assert f" {inst.root / 'b/edge'} tmpfs " in mounts
    finally:
        srv.cli("apps", "destroy", "hello", "--yes", check=False)
        machines = inst.root / "b/state/machines"
        deadline = time.monotonic() + 30
        while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.2)
        agent_b.send_signal(signal.SIGTERM)
        agent_b.wait(timeout=30)
        srv.cli("hosts", "uncordon", local)
        # Whatever a failed test left on edge-b goes too.
        runc_root = inst.root / "b/state/runc"
        for left in (inst.root / "b/state/machines").glob("*"):
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "--force", left.name],
                capture_output=True,
            )
        pidfile = inst.root / "b/edge/haproxy.pid"
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().split()[0]], capture_output=True)
            time.sleep(0.5)
        subprocess.run(["umount", str(inst.root / "b/edge")], capture_output=True)
