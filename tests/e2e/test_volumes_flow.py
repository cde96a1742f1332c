"""Volumes through the CLI on a real server and agent (root, runc, gocryptfs)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli_flow import Server, stop
from tests.e2e.test_deploy_flow import machines, start_server, write_config
from tests.e2e.test_second_host import (  # the second host's fixture and helpers
    Installation,
    hosts,
    installation,  # noqa: F401 - a fixture
    start_agent,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs machines as root"),
    pytest.mark.skipif(shutil.which("gocryptfs") is None, reason="gocryptfs is not installed"),
]
MOUNT = '[[mounts]]\n  source = "data"\n  destination = "/data"\n'


def _create_volume(srv: Server) -> dict[str, object]:
    """`hangar volumes create`, once the local agent has said how it encrypts volumes."""
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


def _inside(srv: Server, mid: str, script: str) -> str:
    return srv.cli("machines", "exec", mid, "--app", "hello", "--", "sh", "-c", script).stdout


def _wait_release(srv: Server, version: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        if release["version"] == version and release["status"] in ("complete", "failed"):
            assert release["status"] == "complete", release
            return
        time.sleep(0.3)
    raise AssertionError(f"release v{version} did not finish")


def test_a_volume_keeps_data_across_deploys_and_crashes_and_only_as_ciphertext(
    deployed: tuple[Server, Path, Path],
) -> None:
    srv, tmp, agent_root = deployed
    volume = _create_volume(srv)
    assert volume["encryption"] == "gocryptfs" and volume["size"] == "64mb"
    host = srv.json("hosts", "show", str(volume["host"]))
    assert host["volume_backend"] == "gocryptfs"  # type: ignore[index]

    config = write_config(tmp, "vol.toml")
    with config.open("a") as handle:
        handle.write(MOUNT)
    srv.cli("deploy", "--config", str(config))
    (machine,) = machines(srv)
    mid = str(machine["id"])
    listed = srv.json("volumes", "list", "--app", "hello")
    assert [(v["id"], v["machine"], v["state"]) for v in listed] == [  # type: ignore[union-attr,index]
        (volume["id"], mid, "ready")
    ]
    canary = "CANARY-" + secrets.token_hex(16)
    out = _inside(srv, mid, f"echo {canary} > /data/note && cat /data/note && ls -lnd /data")
    assert canary in out
    assert out.splitlines()[-1].split()[2] == "0"  # the machine's root owns it

    # A new release: the machine is replaced, the volume and its data stay.
    again = write_config(tmp, "vol2.toml", wait="31s")
    with again.open("a") as handle:
        handle.write(MOUNT)
    srv.cli("deploy", "--config", str(again))
    _wait_release(srv, 2)
    (machine,) = machines(srv)
    assert machine["running_version"] == 2
    assert _inside(srv, str(machine["id"]), "cat /data/note").strip() == canary

    # The server killed outright: the restarted agent adopts the machine and its mount.
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait()
    port = int(srv.api.rsplit(":", 1)[1])
    srv.process = start_server(tmp / "data", agent_root / "agent", srv.env, port)
    deadline = time.monotonic() + 30
    while True:
        got = srv.cli(
            "machines", "exec", str(machine["id"]), "--app", "hello", "--", "cat", "/data/note",
            check=False,
        )  # fmt: skip
        if got.returncode == 0:
            break
        assert time.monotonic() < deadline, got.stderr
        time.sleep(0.3)
    assert got.stdout.strip() == canary

    # A stopped machine's volume is unmounted; started again, the data is there.
    mid = str(machine["id"])
    srv.cli("machines", "stop", mid, "--app", "hello")
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "stopped", "--timeout", "30s")
    deadline = time.monotonic() + 30
    while f"{volume['id']}/data " in Path("/proc/self/mounts").read_text():
        assert time.monotonic() < deadline, "the stopped machine's volume is still mounted"
        time.sleep(0.2)
    srv.cli("machines", "start", mid, "--app", "hello")
    srv.cli("machines", "wait", mid, "--app", "hello", "--state", "started", "--timeout", "30s")
    assert _inside(srv, mid, "cat /data/note").strip() == canary

    # Another app naming the volume in its hangar.toml gets none of it.
    srv.cli("apps", "create", "other")
    other = tmp / "other.toml"
    other.write_text(config.read_text().replace('app = "hello"', 'app = "other"'))
    refused = srv.cli("deploy", "--config", str(other), check=False)
    srv.cli("apps", "destroy", "other", "--yes")
    assert refused.returncode == 1 and "has no volume named 'data'" in refused.stderr
    # Only one machine holds a volume: a second machine is refused, saying how to fix it.
    second = srv.cli("machines", "create", "--app", "hello", check=False)
    assert second.returncode == 1 and "hangar volumes create data" in second.stderr
    # Destroying it under its machine is refused.
    held = srv.cli("volumes", "destroy", str(volume["id"]), "--app", "hello", "--yes", check=False)
    assert held.returncode == 1 and "held by machine" in held.stderr

    # Extend: at once if the host can grow it in use, else it says it needs a restart.
    grown = srv.cli("volumes", "extend", "data", "--app", "hello", "--size", "128mb")
    assert "now 128mb" in grown.stdout
    if not host["volume_grows_online"]:  # type: ignore[index]
        assert "next starts" in grown.stdout

    # A new machine (the old one destroyed) takes the freed volume, data and all,
    # grown to its new size as it is mounted again.
    srv.cli("machines", "destroy", mid, "--app", "hello", "--force", "--yes")
    deadline = time.monotonic() + 60
    while srv.json("volumes", "show", "data", "--app", "hello")["machine"] is not None:  # type: ignore[index]
        assert time.monotonic() < deadline, "the volume was not freed"
        time.sleep(0.3)
    made = srv.json("machines", "create", "--app", "hello")
    new_id = str(made["id"])  # type: ignore[index]
    assert new_id != mid
    srv.cli("machines", "wait", new_id, "--app", "hello", "--state", "started", "--timeout", "30s")
    assert _inside(srv, new_id, "cat /data/note").strip() == canary
    handle = agent_root / "agent/volumes" / str(volume["id"]) / "handle.json"
    assert json.loads(handle.read_text())["size_mb"] == 128

    # Nowhere on the host's disk in plaintext: store, logs, the agent's files (the volume
    # file among them); the plaintext mount is on the agent's tmpfs, never on disk.
    bundles = agent_root / "agent/bundles"
    files = [p for p in (tmp / "data").rglob("*") if p.is_file()] + [tmp / "server.log"]
    files += [
        p for p in (agent_root / "agent").rglob("*") if p.is_file() and bundles not in p.parents
    ]
    backing = agent_root / "agent/volumes" / str(volume["id"]) / "volume.img"
    assert backing in files
    for path in files:
        assert canary.encode() not in path.read_bytes(), path

    # The app destroyed: its machine goes, then its volume's key and files.
    srv.cli("apps", "destroy", "hello", "--yes")
    volumes, run = agent_root / "agent/volumes", bundles / ".volumes"
    deadline = time.monotonic() + 60
    while any(volumes.iterdir()) or (run.exists() and any(run.iterdir())):
        assert time.monotonic() < deadline, list(volumes.iterdir())
        time.sleep(0.3)
    mounts = Path("/proc/self/mounts").read_text()
    assert str(volume["id"]) not in mounts


def test_a_volume_on_a_joined_host_gets_its_key_there_and_only_there(
    installation: Installation,  # noqa: F811 - the fixture imported above
) -> None:
    """The machine follows its volume to host-b; host-b's agent gets the key over mutual
    TLS, sealed; the server's own host never holds the volume or its key."""
    inst = installation
    srv, tmp = inst.srv, inst.tmp
    token = str(srv.json("hosts", "join-token", "--name", "host-b", "--expires", "5m")["token"])  # type: ignore[index]
    agent_b = start_agent(inst, inst.root / "b", "--api", srv.api, "--join", token)
    try:
        wait_for(
            "host-b to say how it encrypts volumes",
            lambda: hosts(srv).get("host-b", {}).get("volume_backend") == "gocryptfs",
        )
        made = srv.json(
            "volumes", "create", "data", "--app", "hello", "--size", "64mb", "--host", "host-b"
        )
        config = write_config(tmp, "vol.toml")
        with config.open("a") as handle:
            handle.write(MOUNT)
        # The server's own host has fewer machines to run; the volume decides.
        srv.cli("deploy", "--config", str(config))
        (machine,) = machines(srv)
        assert machine["host"] == "host-b"
        mid = str(machine["id"])
        canary = "CANARY-" + secrets.token_hex(16)
        assert canary in _inside(srv, mid, f"echo {canary} > /data/n && cat /data/n")
        volume_id = str(made["id"])  # type: ignore[index]
        assert (inst.root / "b/volumes" / volume_id / "volume.img").is_file()
        assert not (inst.root / "a/volumes" / volume_id).exists()
        bundles = inst.root / "b/bundles"
        files = [
            p for p in (inst.root / "b").rglob("*") if p.is_file() and bundles not in p.parents
        ]
        for path in [*files, tmp / "b.log"]:
            assert canary.encode() not in path.read_bytes(), path
        events = json.loads(srv.cli("audit", "list", "--org", "acme", "--json").stdout)
        delivered = [e for e in events if e["action"] == "volume.deliver_keys"]
        assert delivered and all(e["outcome"] == "success" for e in delivered)
        # The app destroyed: host-b deletes the volume's files once its machine is gone.
        srv.cli("apps", "destroy", "hello", "--yes")
        wait_for(
            "host-b to delete the volume",
            lambda: not (inst.root / "b/volumes" / volume_id).exists(),
        )
    finally:
        stop(agent_b)
