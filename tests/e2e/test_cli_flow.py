"""The CLI driving a real `hangar server run` over HTTPS, as a person would."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HANGAR = [sys.executable, "-m", "hangar.cli.main"]
pytestmark = pytest.mark.slow


@dataclass
class Server:
    data_dir: Path
    api: str
    token: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def cli(
        self, *args: str, token: str | None = None, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if token is not None:
            env["HANGAR_TOKEN"] = token
        result = subprocess.run(
            [*HANGAR, *args], env=env, input=stdin or "", text=True, capture_output=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hangar {' '.join(args)} failed:\n{result.stderr}")
        return result

    def json(self, *args: str, token: str | None = None) -> object:
        return json.loads(self.cli(*args, "--json", token=token).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data_dir: Path, env: dict[str, str], port: int, *options: str) -> subprocess.Popen[bytes]:
    """`hangar server run` on ``port`` (with ``options``), once it answers over TLS."""
    with open(data_dir.parent / "server.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [
                *HANGAR,
                "server",
                "run",
                "--data-dir",
                str(data_dir),
                "--listen-port",
                str(port),
                *(() if "--agent-listen-port" in options else ("--agent-listen-port", "0")),
                *(() if "--metrics-port" in options else ("--metrics-port", "0")),
                *(options or ("--no-agent",)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    trust = ssl.create_default_context(cafile=str(data_dir / "ca.crt"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"https://127.0.0.1:{port}/v1/healthz", verify=trust, timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError((data_dir.parent / "server.log").read_text())


def init(data_dir: Path, token_file: Path, env: dict[str, str]) -> dict[str, object]:
    """`hangar server init` for org acme, admin@example.com; the token goes to a file."""
    result = subprocess.run(
        [
            *HANGAR,
            "server",
            "init",
            "--data-dir",
            str(data_dir),
            "--org",
            "acme",
            "--admin-email",
            "admin@example.com",
            "--token-file",
            str(token_file),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir = tmp_path / "data"
    token_file = tmp_path / "admin.token"
    made = init(data_dir, token_file, env)
    assert made["token"] is None  # written to the file, not printed
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    port = free_port()
    proc = start(data_dir, env, port)
    srv = Server(data_dir, f"https://127.0.0.1:{port}", token_file.read_text().strip(), env, proc)
    try:
        yield srv
    finally:
        stop(srv.process)  # a test may have restarted it


def login(server: Server) -> None:
    out = server.cli(
        "--api",
        server.api,
        "auth",
        "login",
        "--ca-cert",
        str(server.data_dir / "ca.crt"),
        "--token",
        "-",
        stdin=server.token + "\n",
    )
    assert "Logged in" in out.stdout and "admin@example.com" in out.stdout


def test_the_whole_flow(server: Server, tmp_path: Path) -> None:
    login(server)
    config = Path(server.env["HANGAR_CONFIG_DIR"]) / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    assert [o["name"] for o in server.json("orgs", "list")] == ["acme"]  # type: ignore[union-attr,index]
    server.cli("apps", "create", "clinic-api")
    server.cli("apps", "create", "billing")
    apps = server.json("apps", "list")
    assert sorted(a["name"] for a in apps) == ["billing", "clinic-api"]  # type: ignore[union-attr,index]
    assert server.json("apps", "show", "billing")["org"] == "acme"  # type: ignore[index]

    bad = server.cli("apps", "create", "Not_A_Label", check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("error: app name 'Not_A_Label'")
    assert "Traceback" not in bad.stderr

    no_yes = server.cli("apps", "destroy", "billing", check=False)
    assert no_yes.returncode != 0 and "--yes" in no_yes.stderr
    server.cli("apps", "destroy", "billing", "--yes")
    assert [a["name"] for a in server.json("apps", "list")] == ["clinic-api"]  # type: ignore[union-attr,index]

    server.cli("orgs", "members", "add", "acme", "bob@example.com", "--role", "viewer")
    server.cli("orgs", "members", "set-role", "acme", "bob@example.com", "member")
    members = {m["email"]: m["role"] for m in server.json("orgs", "members", "list", "acme")}  # type: ignore[union-attr]
    assert members == {"admin@example.com": "admin", "bob@example.com": "member"}
    server.cli("orgs", "members", "remove", "acme", "bob@example.com", "--yes")

    readonly = server.json("tokens", "create", "readonly", "--org", "acme", "--expiry", "1h")
    ro_token = readonly["token"]  # type: ignore[index]
    assert server.json("apps", "list", token=ro_token)
    denied = server.cli("apps", "create", "nope", token=ro_token, check=False)
    assert denied.returncode == 1 and "does not allow the create action" in denied.stderr

    narrowed = server.cli(
        "tokens", "attenuate", "--app", "clinic-api", "--actions", "read", "--expiry", "10m"
    ).stdout.strip()
    me = server.json("auth", "whoami", token=narrowed)
    assert me["apps"] == ["clinic-api"] and me["actions"] == ["read"]  # type: ignore[index]
    assert server.cli("apps", "show", "clinic-api", token=narrowed).returncode == 0

    server.cli("tokens", "revoke", readonly["id"], "--yes")  # type: ignore[index]
    revoked = server.cli("apps", "list", token=ro_token, check=False)
    assert revoked.returncode == 1 and "revoked" in revoked.stderr
    listed = {t["id"]: t for t in server.json("tokens", "list", "--org", "acme")}  # type: ignore[union-attr]
    assert listed[readonly["id"]]["revoked_at"] is not None  # type: ignore[index]

    events = server.json("audit", "list", "--org", "acme")
    actions = [e["action"] for e in events]  # type: ignore[union-attr]
    for expected in (
        "app.create",
        "app.destroy",
        "member.add",
        "member.set_role",
        "member.remove",
        "token.create",
        "token.revoke",
        "apps:create",
    ):
        assert expected in actions
    verify = server.cli("audit", "verify", "--org", "acme")
    assert verify.stdout.startswith("ok")
    assert server.cli("audit", "verify", "--system").stdout.startswith("ok")

    good = tmp_path / "hangar.toml"
    good.write_text('app = "clinic-api"\n[http_service]\ninternal_port = 8080\n')
    assert "is valid" in server.cli("config", "validate", str(good)).stdout
    good.write_text('app = "clinic-api"\n[http_service]\ninternal_prot = 8080\n')
    invalid = server.cli("config", "validate", str(good), check=False)
    assert invalid.returncode == 2
    assert f"{good}:3: unknown key 'http_service.internal_prot'" in invalid.stderr


def test_tampering_is_reported_with_its_sequence_number(server: Server) -> None:
    login(server)
    for i in range(5):
        server.cli("apps", "create", f"app-{i}")
    org_id = server.json("orgs", "show", "acme")["id"]  # type: ignore[index]
    stop(server.process)  # writes a signed checkpoint of every chain's head
    db = sqlite3.connect(server.data_dir / "hangar.db")
    db.execute("UPDATE audit_events SET target = 'innocent' WHERE chain = ? AND seq = 3", (org_id,))
    db.commit()
    db.close()
    offline = server.cli("audit", "verify", "--data-dir", str(server.data_dir), check=False)
    assert offline.returncode == 1
    assert f"FAILED  chain {org_id}: first bad event 3" in offline.stdout

    port = int(server.api.rsplit(":", 1)[1])
    server.process = start(server.data_dir, server.env, port)
    online = server.cli("audit", "verify", "--org", "acme", "--json", check=False)
    assert online.returncode == 1
    assert json.loads(online.stdout)[0]["first_bad_seq"] == 3


def test_errors_are_one_clear_line(server: Server) -> None:
    out = server.cli("apps", "list", check=False)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "error: you are not logged in",
        "hint: run `hangar auth login --api URL` (or with --token TOKEN)",
    ]
    debug = server.cli("--debug", "apps", "list", check=False)
    assert "Traceback" in debug.stderr
    unreachable = server.cli(
        "--api", f"https://127.0.0.1:{free_port()}", "apps", "list", token=server.token, check=False
    )
    assert unreachable.returncode == 1 and "cannot reach the Hangar API" in unreachable.stderr
    bad_login = server.cli(
        "--api",
        server.api,
        "auth",
        "login",
        "--ca-cert",
        str(server.data_dir / "ca.crt"),
        "--token",
        "hm1_nope",
        check=False,
    )
    assert bad_login.returncode == 1 and "error: the token is malformed" in bad_login.stderr
    assert not (Path(server.env["HANGAR_CONFIG_DIR"]) / "config.json").exists()


def test_secrets_from_the_command_line(server: Server) -> None:
    login(server)
    server.cli("apps", "create", "web")
    dotenv = "export A=1\nB=\"two\nlines\"\n# note\nC='$literal'\n"
    out = server.cli("secrets", "import", "--app", "web", stdin=dotenv)
    assert "Imported: A, B, C" in out.stdout
    bad = server.cli("secrets", "import", "--app", "web", stdin="D=4\nnot a line\n", check=False)
    assert bad.returncode == 2 and "line 2: expected NAME=value" in bad.stderr
    reserved = server.cli("secrets", "set", "HANGAR_X=1", "--app", "web", check=False)
    assert reserved.returncode != 0 and "reserved" in reserved.stderr
    listed = server.json("secrets", "list", "--app", "web")
    assert [s["name"] for s in listed] == ["A", "B", "C"]  # type: ignore[index]
    assert all(
        set(s)
        == {"name", "digest", "version", "status", "created_by", "created_at", "secrets_version"}
        for s in listed
    )  # type: ignore[union-attr]
    # The import made the app's first secrets version; every row names it.
    assert {s["secrets_version"] for s in listed} == {1}  # type: ignore[index]
    server.cli("secrets", "unset", "C", "--app", "web", "--stage")
    table = server.cli("secrets", "list", "--app", "web").stdout
    assert "staged-unset" in table and "two" not in table
    server.cli("secrets", "deploy", "--app", "web")
    assert [s["name"] for s in server.json("secrets", "list", "--app", "web")] == ["A", "B"]  # type: ignore[index]
    refused = server.cli("secrets", "unset", "--all", "--app", "web", check=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    server.cli("secrets", "unset", "--all", "--app", "web", "--yes")
    assert server.json("secrets", "list", "--app", "web") == []
