"""Backups through the CLI on a real server and agent: a machine writes in its volume,
which is snapshotted while it runs, backed up to a real REST server (``rclone serve
restic``), drilled, and exported as a tar (root, runc, gocryptfs, restic)."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backup_targets import RestServer, rest_server
from tests.e2e.test_cli_flow import Server, free_port, init, login, stop
from tests.e2e.test_deploy_flow import build_example_image, machines, start_server, write_config

__all__ = ["rest_server"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
    pytest.mark.skipif(shutil.which("gocryptfs") is None, reason="gocryptfs is not installed"),
]
MOUNT = '[[mounts]]\n  source = "data"\n  destination = "/data"\n'


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A server with its agent, allowing backups to loopback, app hello."""
    agent_root = Path(tempfile.mkdtemp(prefix="hangar-backups-", dir="/var/tmp"))
    agent_root.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir, token_file = tmp_path / "data", tmp_path / "admin.token"
    init(data_dir, token_file, env)
    port = free_port()
    proc = start_server(
        data_dir,
        agent_root / "agent",
        {**env, "HANGAR_ALLOWED_BACKUP_HOSTS": '["127.0.0.1"]'},
        port,
    )
    srv = Server(data_dir, f"https://127.0.0.1:{port}", token_file.read_text().strip(), env, proc)
    build_example_image(tmp_path / "image")
    try:
        login(srv)
        srv.cli("apps", "create", "hello")
        yield srv, tmp_path
    finally:
        srv.cli("apps", "destroy", "hello", "--yes", check=False)
        # The machine goes, then its volume (key dropped, files and mounts removed).
        machines_dir, volumes = agent_root / "agent/state/machines", agent_root / "agent/volumes"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            (machines_dir.exists() and any(machines_dir.iterdir()))
            or (volumes.exists() and any(volumes.iterdir()))
        ):
            time.sleep(0.2)
        stop(srv.process)
        # Whatever is still mounted under the agent's directory, deepest first.
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(agent_root))
        ]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(agent_root, ignore_errors=True)


def _create_volume(srv: Server) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        made = srv.cli(
            "volumes", "create", "data", "--app", "hello", "--size", "64mb", "--json", check=False
        )
        if made.returncode == 0:
            return dict(json.loads(made.stdout))
        assert "has not reported" in made.stderr, made.stderr
        assert time.monotonic() < deadline, made.stderr
        time.sleep(0.3)


def test_snapshot_backup_drill_and_export_of_a_running_machines_volume(
    deployed: tuple[Server, Path], rest_server: RestServer
) -> None:
    srv, tmp = deployed
    _create_volume(srv)
    config = write_config(tmp, "vol.toml")
    with config.open("a") as handle:
        handle.write(MOUNT)
    srv.cli("deploy", "--config", str(config))
    (machine,) = machines(srv)
    mid = str(machine["id"])
    canary = "CANARY-" + secrets.token_hex(16)
    srv.cli(
        "machines", "exec", mid, "--app", "hello", "--", "sh", "-c", f"echo {canary} > /data/note"
    )

    repo = srv.cli(
        "backups", "repo", "set", rest_server.url("hello"), "--user", rest_server.user,
        stdin=rest_server.password + "\n",
    )  # fmt: skip
    assert "Backups go to rest:" in repo.stdout and rest_server.password not in repo.stdout

    snap = srv.json("volumes", "snapshots", "create", "data", "--app", "hello")
    assert snap["consistent"] == "frozen"  # type: ignore[index]  # the machine holds it
    listed = srv.json("volumes", "snapshots", "list", "data", "--app", "hello")
    assert [s["id"] for s in listed] == [snap["id"]]  # type: ignore[index,union-attr]

    backup = srv.json("backups", "run", "--volume", "data", "--app", "hello")
    assert backup["bytes"] > 0  # type: ignore[index,operator]
    ids = [b["id"] for b in srv.json("backups", "list")]  # type: ignore[union-attr]
    assert any(i.startswith(str(backup["backup_id"])) for i in ids)  # type: ignore[index]
    for path in rest_server.root.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes()  # ciphertext in the repository

    drill = srv.json("backups", "drill", "--volume", "data", "--app", "hello")
    assert drill["ok"] is True and drill["check_ok"] is True  # type: ignore[index]
    check = srv.cli("backups", "check", "--read-data-subset", "100%")
    assert "intact" in check.stdout

    out = tmp / "data.tar"
    srv.cli("volumes", "export", "data", str(snap["id"]), "-o", str(out), "--app", "hello")  # type: ignore[index]
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(fileobj=io.BytesIO(out.read_bytes())) as tar:
        member = tar.extractfile("./note")
        assert member is not None and member.read().decode().strip() == canary
    events = srv.json("audit", "list", "--org", "acme", "--limit", "1000")
    actions = {e["action"] for e in events}  # type: ignore[union-attr,index]
    assert {"backups.repo.set", "volume.job.backup", "volume.job.drill"} <= actions


def test_a_backup_restores_onto_a_joined_host_over_mutual_tls(
    tmp_path: Path, rest_server: RestServer
) -> None:
    """The restore runs on host-b's own agent: it takes the job over mutual TLS with the
    repository's secrets sealed to it, fetches the backup with restic, verifies it."""
    import hashlib

    from tests.e2e.conftest import running_server
    from tests.e2e.test_second_host import Installation, hosts, start_agent, wait_for

    agent_port = free_port()
    options = ("--agent-listen-port", str(agent_port), "--no-edge")
    toml = 'allowed_backup_hosts = ["127.0.0.1"]\n'
    with running_server(tmp_path, "bkp2", *options, server_toml=toml, agent="a") as (srv, root):
        inst = Installation(srv, tmp_path, root, agent_port)
        token = str(srv.json("hosts", "join-token", "--name", "host-b", "--expires", "5m")["token"])  # type: ignore[index]
        agent_b = start_agent(inst, root / "b", "--api", srv.api, "--join", token)
        try:
            wait_for(
                "host-b to say how it encrypts volumes",
                lambda: hosts(srv).get("host-b", {}).get("volume_backend") == "gocryptfs",
            )
            _create_volume(srv)
            config = write_config(tmp_path, "vol.toml")
            with config.open("a") as handle:
                handle.write(MOUNT)
            srv.cli("deploy", "--config", str(config))
            (machine,) = machines(srv)
            canary = "CANARY-" + secrets.token_hex(16)
            srv.cli(
                "machines", "exec", str(machine["id"]), "--app", "hello", "--",
                "sh", "-c", f"echo {canary} > /data/note",
            )  # fmt: skip
            srv.cli(
                "backups", "repo", "set", rest_server.url("hello"), "--user", rest_server.user,
                stdin=rest_server.password + "\n",
            )  # fmt: skip
            backup = srv.json("backups", "run", "--volume", "data", "--app", "hello")
            snap = srv.json("volumes", "snapshots", "list", "data", "--app", "hello")[0]  # type: ignore[index]
            restored = srv.json(
                "backups", "restore", str(backup["backup_id"]), "--volume", "data",  # type: ignore[index]
                "--name", "copy", "--host", "host-b", "--app", "hello",
            )  # fmt: skip
            new = str(restored["volume"])  # type: ignore[index]
            shown = srv.json("volumes", "show", new, "--app", "hello")
            assert (shown["host"], shown["state"]) == ("host-b", "ready")  # type: ignore[index]
            image = root / "b/volumes" / new / "volume.img"
            assert hashlib.sha256(image.read_bytes()).hexdigest() == snap["sha256"]  # type: ignore[index]
            assert canary.encode() not in image.read_bytes()  # ciphertext there too
            assert not (root / "a/volumes" / new).exists()
            log = (tmp_path / "b.log").read_text(errors="replace")
            assert rest_server.password not in log
        finally:
            srv.cli("apps", "destroy", "hello", "--yes", check=False)
            wait_for(
                "the volumes to be deleted",
                lambda: (
                    not any((root / "b/volumes").glob("vol_*"))
                    and not any((root / "a/volumes").glob("vol_*"))
                ),
            )
            stop(agent_b)
            subprocess.run(["umount", str(root / "b/bundles")], capture_output=True)
            for point in sorted(
                (
                    line.split()[1]
                    for line in Path("/proc/self/mounts").read_text().splitlines()
                    if line.split()[1].startswith(str(root))
                ),
                key=len,
                reverse=True,
            ):
                subprocess.run(["umount", "-l", point], capture_output=True)
