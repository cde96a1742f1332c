"""Deploying the example app through the CLI to a real server and agent (root, runc)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli_flow import HANGAR, Server, start

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
]
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
app = "hello"
kill_signal = "SIGTERM"
[build]
  image = "oci:{image}:latest"
[http_service]
  internal_port = 8080
  [[http_service.checks]]
    grace_period = "0.2s"
    interval = "0.5s"
    timeout = "1s"
    path = "{path}"
[deploy]
  strategy = "rolling"
  wait_timeout = "{wait}"
[[vm]]
  memory = "64mb"
"""


def build_example_image(target: Path) -> None:
    """The example app's image (examples/hello/build.py) as an OCI layout at ``target``."""
    spec = importlib.util.spec_from_file_location("hello_build", ROOT / "examples/hello/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(target)


def start_server(
    data_dir: Path, agent_dir: Path, env: dict[str, str], port: int
) -> subprocess.Popen[bytes]:
    return start(data_dir, env, port, "--agent-dir", str(agent_dir), "--no-edge")


def write_config(tmp: Path, name: str, path: str = "/healthz", wait: str = "30s") -> Path:
    config = tmp / name
    config.write_text(CONFIG.format(image=tmp / "image", path=path, wait=wait))
    return config


def page(address: str) -> bytes:
    with socket.create_connection((address, 8080), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def machines(srv: Server) -> list[dict[str, object]]:
    return srv.json("machines", "list", "--app", "hello")  # type: ignore[return-value]


def test_deploy_fail_roll_back_and_control(deployed: tuple[Server, Path, Path]) -> None:
    srv, tmp, _ = deployed
    good = write_config(tmp, "good.toml")
    out = srv.cli("deploy", "--config", str(good))
    assert "Release v1 of hello created" in out.stdout and "Release v1 is live." in out.stdout
    (machine,) = machines(srv)
    assert machine["state"] == "started" and machine["healthy"] is True
    assert b"Hello from Hangar" in page(str(machine["address"]))

    bad = write_config(tmp, "bad.toml", path="/nope", wait="3s")
    failed = srv.cli("deploy", "--config", str(bad), check=False)
    assert failed.returncode == 1
    assert "release v2 failed: machines were not healthy" in failed.stderr
    assert "rolled back to v1" in failed.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (machine,) = machines(srv)
        if machine["running_version"] == 1 and machine["healthy"]:
            break
        time.sleep(0.3)
    assert machine["running_version"] == 1 and machine["healthy"] is True
    releases = srv.json("releases", "--app", "hello")
    assert [r["status"] for r in releases] == ["failed", "complete"]  # type: ignore[index]

    srv.cli("machines", "stop", str(machine["id"]), "--app", "hello")
    deadline = time.monotonic() + 30
    while machines(srv)[0]["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert machines(srv)[0]["state"] == "stopped"
    srv.cli("machines", "start", str(machine["id"]), "--app", "hello")
    deadline = time.monotonic() + 30
    while machines(srv)[0]["state"] != "started" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert machines(srv)[0]["state"] == "started"

    # Bad input: a clear error, and no release made.
    other = tmp / "other.toml"
    other.write_text(good.read_text().replace('app = "hello"', 'app = "other"'))
    wrong_app = srv.cli("deploy", "--config", str(other), "--app", "hello", check=False)
    assert wrong_app.returncode != 0 and "is for app 'other'" in wrong_app.stderr
    no_layout = srv.cli("deploy", "--config", str(good), "--image", str(tmp), check=False)
    assert no_layout.returncode != 0 and "not an OCI image layout" in no_layout.stderr
    # A registry on loopback (nothing listening, and not allowed): a clear error that
    # says nothing of what is there, and no release.
    registry = srv.cli(
        "deploy", "--config", str(good), "--image", "docker://127.0.0.1:9/debian:12", check=False
    )
    assert registry.returncode != 0 and "registry 127.0.0.1:9 unreachable" in registry.stderr
    assert "refused" not in registry.stderr
    assert len(srv.json("releases", "--app", "hello")) == 2  # type: ignore[arg-type]
    status = srv.json("status", "--app", "hello")
    assert status["release"]["version"] == 2  # type: ignore[index]
    events = [e["action"] for e in srv.json("audit", "list", "--org", "acme")]  # type: ignore[union-attr]
    for action in (
        "release.create",
        "release.start",
        "release.complete",
        "release.failed",
        "machine.stop",
        "machine.start",
    ):
        assert action in events


def test_server_killed_mid_deploy_finishes_it(deployed: tuple[Server, Path, Path]) -> None:
    srv, tmp, agent_root = deployed
    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    srv.cli("deploy", "--config", str(write_config(tmp, "again.toml")), "--detach")
    time.sleep(0.3)
    srv.process.send_signal(signal.SIGKILL)  # no shutdown of any kind
    srv.process.wait()
    (machine,) = machines_via_store(tmp / "data")
    port = int(srv.api.rsplit(":", 1)[1])
    srv.process = start_server(tmp / "data", agent_root / "agent", srv.env, port)
    deadline = time.monotonic() + 60
    release: dict[str, object] = {}
    while time.monotonic() < deadline:
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        if release["status"] in ("complete", "failed"):
            break
        time.sleep(0.3)
    assert release["status"] == "complete" and release["version"] == 2
    (after,) = machines(srv)
    assert after["id"] == machine and after["running_version"] == 2 and after["healthy"]
    on_host = sorted(p.name for p in (agent_root / "agent/state/machines").iterdir())
    assert on_host == [after["id"]]  # nothing orphaned


@pytest.mark.parametrize("check", ["/healthz", "/nope"])
def test_server_killed_mid_blue_green_finishes_it_truthfully(
    deployed: tuple[Server, Path, Path], check: str
) -> None:
    """Killed while a blue-green's new set starts: after a restart the release ends
    (switched, or the new set removed) and `hangar releases` says what runs."""
    srv, tmp, agent_root = deployed
    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    srv.cli("machines", "create", "--app", "hello")
    old = set(machines_via_store(tmp / "data"))
    blue_green = write_config(tmp, "bg.toml", path=check, wait="8s")
    text = blue_green.read_text().replace('strategy = "rolling"', 'strategy = "bluegreen"')
    blue_green.write_text(text.replace("[deploy]\n", '[deploy]\n  bluegreen_grace = "1s"\n'))
    srv.cli("deploy", "--config", str(blue_green), "--detach")

    def phase() -> str:
        return str(srv.json("releases", "--app", "hello")[0]["phase"])  # type: ignore[index]

    deadline = time.monotonic() + 60
    seen = phase()
    while not seen.startswith("starting 2 new") and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = phase()
    assert seen == "starting 2 new (not serving yet)"
    srv.process.send_signal(signal.SIGKILL)  # no shutdown of any kind
    srv.process.wait()
    port = int(srv.api.rsplit(":", 1)[1])
    srv.process = start_server(tmp / "data", agent_root / "agent", srv.env, port)
    deadline = time.monotonic() + 90
    release: dict[str, object] = {}
    while time.monotonic() < deadline:
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        if release["status"] in ("complete", "failed"):
            break
        time.sleep(0.3)
    now = machines(srv)
    if check == "/healthz":
        assert (release["status"], release["phase"]) == ("complete", "released")
        assert len(now) == 2 and not {m["id"] for m in now} & old
        assert all(m["running_version"] == 2 for m in now)
    else:
        assert (release["status"], release["phase"]) == ("failed", "failed")
        assert str(release["reason"]).endswith("the new machines were removed; v1 kept serving")
        assert {m["id"] for m in now} == old and all(m["running_version"] == 1 for m in now)
    deadline = time.monotonic() + 30
    on_host = agent_root / "agent/state/machines"
    while time.monotonic() < deadline and len(list(on_host.iterdir())) != 2:
        time.sleep(0.2)
    assert sorted(p.name for p in on_host.iterdir()) == sorted(str(m["id"]) for m in now)


def machines_via_store(data_dir: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(data_dir / "hangar.db")
    try:
        return [row[0] for row in db.execute("SELECT id FROM machines")]
    finally:
        db.close()


def test_json_of_status_is_machine_readable(deployed: tuple[Server, Path, Path]) -> None:
    srv, tmp, _ = deployed
    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")), "--json")
    data = json.loads(srv.cli("status", "--app", "hello", "--json").stdout)
    assert data["app"] == "hello" and data["machines"][0]["state"] == "started"


def test_machine_controls_logs_exec_and_leases(deployed: tuple[Server, Path, Path]) -> None:
    srv, tmp, _ = deployed
    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    (machine,) = machines(srv)
    mid = str(machine["id"])
    page(str(machine["address"]))  # httpd -v logs the request

    uid = srv.cli("machines", "exec", mid, "--app", "hello", "--", "id", "-u")
    assert uid.stdout.strip() == "1000"
    code = srv.cli(
        "machines", "exec", mid, "--app", "hello", "--", "sh", "-c", "exit 3", check=False
    )
    assert code.returncode == 3

    lines = [
        json.loads(line) for line in srv.cli("logs", "--app", "hello", "--json").stdout.splitlines()
    ]
    assert lines and all(r["machine"] == mid and r["app"] == "hello" for r in lines)
    assert any("response:200" in r["line"] for r in lines)  # httpd -v logs each request
    follower = subprocess.Popen(
        [*HANGAR, "logs", "--app", "hello", "-f"],
        env=srv.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    page(str(machine["address"]))
    time.sleep(1.0)
    follower.terminate()
    followed, _ = follower.communicate(timeout=10)
    assert mid in followed and followed.count("\n") >= len(lines)

    srv.cli("machines", "restart", mid, "--app", "hello")
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "started", "--timeout", "30s")
    srv.cli("machines", "stop", mid, "--app", "hello", "--signal", "SIGKILL", "--timeout", "1")
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "stopped", "--timeout", "30s")
    too_soon = srv.cli(
        "machines",
        "wait",
        mid,
        "--app",
        "hello",
        "--state",
        "started",
        "--timeout",
        "1s",
        check=False,
    )
    assert too_soon.returncode == 1 and "not started" in too_soon.stderr
    kinds = [e["kind"] for e in srv.json("machines", "events", mid, "--app", "hello")]  # type: ignore[union-attr]
    for kind in ("restart", "stop", "stopped", "started"):
        assert kind in kinds

    # Leases: while one is held, changes without its nonce are refused.
    import ssl

    import httpx

    http = httpx.Client(
        base_url=srv.api,
        headers={"Authorization": f"Bearer {srv.token}"},
        verify=ssl.create_default_context(cafile=str(srv.data_dir / "ca.crt")),
    )
    lease = http.post(f"/v1/apps/hello/machines/{mid}/lease", json={"ttl": 60})
    assert lease.status_code == 201
    nonce = lease.json()["nonce"]
    refused = srv.cli("machines", "start", mid, "--app", "hello", check=False)
    assert refused.returncode == 1 and "is leased by admin@example.com" in refused.stderr
    second = http.post(f"/v1/apps/hello/machines/{mid}/lease", json={"ttl": 60})
    assert second.status_code == 409
    ok = http.post(f"/v1/apps/hello/machines/{mid}/start", headers={"Hangar-Lease-Nonce": nonce})
    assert ok.status_code == 200
    assert (
        http.request(
            "DELETE", f"/v1/apps/hello/machines/{mid}/lease", headers={"Hangar-Lease-Nonce": nonce}
        ).status_code
        == 204
    )
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "started", "--timeout", "30s")
    events = [e["action"] for e in srv.json("audit", "list", "--org", "acme", "--limit", "1000")]  # type: ignore[union-attr]
    for action in ("machine.exec", "machine.restart", "machine.lease", "machine.lease_release"):
        assert action in events
    http.close()


def test_release_command_and_one_off_machines(deployed: tuple[Server, Path, Path]) -> None:
    srv, tmp, _ = deployed
    srv.cli("deploy", "--config", str(write_config(tmp, "good.toml")))
    (serving,) = machines(srv)

    good = write_config(tmp, "migrate.toml")
    good.write_text(
        good.read_text().replace(
            "[deploy]", "[deploy]\n  release_command = \"sh -c 'echo migrating; exit 0'\""
        )
    )
    assert "Release v2 is live." in srv.cli("deploy", "--config", str(good)).stdout

    bad = write_config(tmp, "broken.toml")
    bad.write_text(
        bad.read_text().replace(
            "[deploy]", "[deploy]\n  release_command = \"sh -c 'echo boom >&2; exit 4'\""
        )
    )
    failed = srv.cli("deploy", "--config", str(bad), check=False)
    assert failed.returncode == 1 and "release_command exited 4" in failed.stderr
    # Serving machines are untouched by the aborted deploy (the release command's
    # one-off machine may still be listed while the agent removes it).
    (after,) = [m for m in machines(srv) if not m["one_off"]]
    assert after["id"] == serving["id"] and after["running_version"] == 2
    events = [e["action"] for e in srv.json("audit", "list", "--org", "acme", "--limit", "1000")]  # type: ignore[union-attr]
    assert events.count("release.command") == 2

    out = srv.cli(
        "machines",
        "run",
        f"oci:{tmp / 'image'}:latest",
        "--app",
        "hello",
        "--",
        "sh",
        "-c",
        "echo one-off says hi",
    )
    one_off = out.stdout.split()[3].rstrip(";")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = srv.json("machines", "show", one_off, "--app", "hello")
        if shown["state"] == "stopped":  # type: ignore[index]
            break
        time.sleep(0.3)
    assert shown["exit_code"] == 0 and shown["one_off"] is True  # type: ignore[index]
    logged = srv.cli("logs", "--app", "hello", "-m", one_off).stdout
    assert "one-off says hi" in logged
    time.sleep(2)
    assert srv.json("machines", "show", one_off, "--app", "hello")["state"] == "stopped"  # type: ignore[index]


def test_secrets_reach_only_the_machine(deployed: tuple[Server, Path, Path]) -> None:
    """Set a random canary; it must show up inside the machine and nowhere else."""
    srv, tmp, agent_root = deployed
    first, second = "canary-" + secrets.token_hex(12), "canary-" + secrets.token_hex(20)
    out = srv.cli(
        "secrets", "set", "DATABASE_URL=-", "PLAIN=x", "--app", "hello", stdin=first + "\n"
    )
    seen = [out.stdout + out.stderr]
    config = write_config(tmp, "good.toml")
    with config.open("a") as handle:  # the secret as a file too, on tmpfs
        handle.write(
            '[[files]]\n  guest_path = "/run/secrets/db"\n  secret_name = "DATABASE_URL"\n'
        )
    srv.cli("deploy", "--config", str(config))
    (machine,) = machines(srv)
    mid = str(machine["id"])

    def length_inside() -> str:
        # Prints only the length: the value itself never leaves the machine.
        probe = 'case "$DATABASE_URL" in canary-*) echo ${#DATABASE_URL};; *) echo none;; esac'
        return srv.cli(
            "machines", "exec", mid, "--app", "hello", "--", "sh", "-c", probe
        ).stdout.strip()

    assert length_inside() == str(len(first))
    as_file = "v=$(cat /run/secrets/db); echo ${#v}; ls -ln /run/secrets/db"
    listing = srv.cli("machines", "exec", mid, "--app", "hello", "--", "sh", "-c", as_file).stdout
    length, mode = listing.splitlines()
    assert length == str(len(first))
    assert mode.startswith("-r--------") and " 1000 " in mode  # the machine's user's only

    # Setting it again (not staged) rolls out as a new release, health-gated.
    out = srv.cli("secrets", "set", "DATABASE_URL=-", "--app", "hello", stdin=second)
    seen.append(out.stdout + out.stderr)
    assert "Rolling out as release v2" in out.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        if release["status"] != "running" and release["status"] != "pending":
            break
        time.sleep(0.3)
    assert release["status"] == "complete"
    assert length_inside() == str(len(second))

    # Rotate the KEK (online) and the app's data key; a restarted machine still gets it.
    def deliveries() -> int:
        events = json.loads(srv.cli("audit", "list", "--org", "acme", "--json").stdout)
        return sum(e["action"] == "secrets.deliver" and e["outcome"] == "success" for e in events)

    rotated = srv.cli("server", "rotate-kek")
    assert "re-wrapped" in rotated.stdout and "retired" in rotated.stdout
    assert "re-encrypted" in srv.cli("secrets", "rotate-key", "--app", "hello").stdout
    before = deliveries()
    srv.cli("machines", "restart", mid, "--app", "hello")
    deadline = time.monotonic() + 30
    while deliveries() == before and time.monotonic() < deadline:
        time.sleep(0.3)
    assert deliveries() > before  # a new start, with the keys re-wrapped
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "started", "--timeout", "30s")
    deadline = time.monotonic() + 30
    while True:
        try:
            assert length_inside() == str(len(second))
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    listed = srv.cli("secrets", "list", "--app", "hello", "--json").stdout
    seen += [listed, srv.cli("secrets", "list", "--app", "hello").stdout]
    assert {r["name"] for r in json.loads(listed)} == {"DATABASE_URL", "PLAIN"}
    audit = srv.cli("audit", "list", "--org", "acme", "--json").stdout
    seen.append(audit)
    actions = {e["action"] for e in json.loads(audit)}
    assert {"secrets.set", "secrets.deliver"} <= actions

    canaries = [first.encode(), second.encode()]
    for text in seen:
        assert not any(c.decode() in text for c in canaries)
    # The server's files and logs, and its process's environment and command line.
    files = [p for p in (tmp / "data").rglob("*") if p.is_file()] + [tmp / "server.log"]
    bundles = agent_root / "agent/bundles"
    files += [
        p for p in (agent_root / "agent").rglob("*") if p.is_file() and bundles not in p.parents
    ]
    pids = [srv.process.pid] + [
        int(p.read_text()) for p in (agent_root / "agent/state/machines").glob("*/shim.pid")
    ]
    files += [Path(f"/proc/{pid}/{what}") for pid in pids for what in ("environ", "cmdline")]
    for path in files:
        data = path.read_bytes()
        for canary in canaries:
            assert canary not in data, path
    # Where it does live: the machine's bundle, on the agent's 0700 tmpfs.
    assert second.encode() in (bundles / mid / "config.json").read_bytes()


def test_watching_the_edge_is_refused_without_an_edge(deployed: tuple[Server, Path, Path]) -> None:
    """max_error_rate needs the edge on the control plane's host: this one runs none."""
    srv, tmp, _ = deployed
    config = write_config(tmp, "watch.toml")
    text = config.read_text().replace('strategy = "rolling"', 'strategy = "bluegreen"')
    config.write_text(text.replace("[deploy]\n", "[deploy]\n  max_error_rate = 0.1\n"))
    refused = srv.cli("deploy", "--config", str(config), check=False)
    assert refused.returncode != 0
    assert "max_error_rate needs the edge" in refused.stderr
    assert srv.json("releases", "--app", "hello") == []  # nothing was made


def test_a_rollback_runs_with_its_releases_secrets(deployed: tuple[Server, Path, Path]) -> None:
    """Roll back past a secrets change: the new machine reads the old value, in its
    environment and its file mount, and neither value is anywhere else."""
    srv, tmp, agent_root = deployed
    first, second = "canary-" + secrets.token_hex(12), "canary-" + secrets.token_hex(20)
    seen = []
    out = srv.cli("secrets", "set", "DATABASE_URL=-", "--app", "hello", stdin=first)
    seen.append(out.stdout + out.stderr)
    config = write_config(tmp, "good.toml")
    with config.open("a") as handle:
        handle.write(
            '[[files]]\n  guest_path = "/run/secrets/db"\n  secret_name = "DATABASE_URL"\n'
        )
    seen.append(srv.cli("deploy", "--config", str(config)).stdout)

    def live_machine(version: int) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = [
                m
                for m in machines(srv)
                if m["running_version"] == version and m["healthy"] and m["state"] == "started"
            ]
            if len(ready) == 1 and len(machines(srv)) == 1:
                return str(ready[0]["id"])
            time.sleep(0.3)
        raise AssertionError(f"no healthy machine of v{version}: {machines(srv)}")

    def inside(mid: str) -> list[str]:
        # Only lengths leave the machine, never the value.
        probe = (
            'case "$DATABASE_URL" in canary-*) echo ${#DATABASE_URL};; *) echo none;; esac;'
            " v=$(cat /run/secrets/db); echo ${#v}"
        )
        out = srv.cli("machines", "exec", mid, "--app", "hello", "--", "sh", "-c", probe)
        return out.stdout.split()

    assert inside(live_machine(1)) == [str(len(first))] * 2
    out = srv.cli("secrets", "set", "DATABASE_URL=-", "--app", "hello", stdin=second)
    seen.append(out.stdout + out.stderr)
    assert "Rolling out as release v2" in out.stdout
    assert inside(live_machine(2)) == [str(len(second))] * 2

    out = srv.cli("releases", "rollback", "1", "--app", "hello")
    seen.append(out.stdout + out.stderr)
    assert "v1's image, configuration and secrets version 1" in out.stdout
    assert "current secrets" not in out.stdout
    assert inside(live_machine(3)) == [str(len(first))] * 2
    listed = srv.json("releases", "--app", "hello")
    assert [(r["version"], r["secrets_version"]) for r in listed] == [(3, 1), (2, 2), (1, 1)]  # type: ignore[index, union-attr]
    table = srv.cli("releases", "--app", "hello").stdout
    assert "SECRETS" in table
    # The app's current secrets are still version 2, which the next change builds on.
    names = srv.cli("secrets", "list", "--app", "hello").stdout
    assert "Secrets version 2" in names
    seen += [table, names, srv.cli("secrets", "list", "--app", "hello", "--json").stdout]
    seen.append(srv.cli("audit", "list", "--org", "acme", "--json").stdout)

    canaries = [first.encode(), second.encode()]
    for text in seen:
        assert not any(c.decode() in text for c in canaries)
    files = [p for p in (tmp / "data").rglob("*") if p.is_file()] + [tmp / "server.log"]
    bundles = agent_root / "agent/bundles"
    files += [
        p for p in (agent_root / "agent").rglob("*") if p.is_file() and bundles not in p.parents
    ]
    for path in files:
        data = path.read_bytes()
        for canary in canaries:
            assert canary not in data, path
