"""Volumes' snapshots, forks, backups, restores onto another host and drills, end to end
through the API and the agents' API: two joined hosts, each with a real gocryptfs
driver doing the jobs it takes, and a real REST server (``rclone serve restic``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.agent.volumejobs import VolumeJobs
from hangar.agent.volumes.base import VolumeLayout, VolumeSpec
from hangar.agent.volumes.manager import VolumeManager
from hangar.api.app import create_agent_app
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.controlplane.state import ControlPlane
from hangar.crypto.volumekeys import open_volume_key
from hangar.store.tables import AuditEvent, BackupRepoRow, Volume
from tests.backup_targets import RestServer, rest_server
from tests.conftest import Installation, bearer, make_installation, mint_token
from tests.integration.test_hosts import _as_host, _join, _join_token

__all__ = ["rest_server"]

pytestmark = pytest.mark.slow

CANARY = b"CANARY-" + secrets.token_hex(8).encode()


@pytest.fixture
def database_url() -> str:
    return ""


@pytest.fixture
def installation(tmp_path: Path, database_url: str) -> Installation:
    return make_installation(tmp_path / "data", database_url, allowed_backup_hosts=["127.0.0.1"])


class AgentsApiLink:
    """The two volume-job calls of a host's link, over the agents' API (as ApiLink makes them)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def volume_jobs(self, recipient: str) -> list[tuple[VolumeJob, dict[str, str] | None]]:
        r = self.client.post("/agent/v1/volume-jobs/take", json={"public_key": recipient})
        assert r.status_code == 200, r.text
        return [(VolumeJob.from_json(j["job"]), j["sealed"]) for j in r.json()]

    def volume_job_done(self, done: VolumeJobResult) -> None:
        r = self.client.post(f"/agent/v1/volume-jobs/{done.job_id}/done", json=done.to_json())
        assert r.status_code == 204, r.text

    def volume_export(self, job_id: str, chunks: Iterator[bytes]) -> None:
        r = self.client.post(f"/agent/v1/volume-jobs/{job_id}/export", content=chunks)
        assert r.status_code == 204, r.text


class FakeAgentHost:
    """A joined host: its agents'-API client, and a real gocryptfs volume manager."""

    def __init__(self, name: str, client: TestClient, base: Path) -> None:
        self.name = name
        self.client = client
        layout = VolumeLayout(base / "volumes", Path("/run") / f"hangar-t-{base.name}")
        self.manager = VolumeManager(layout, "gocryptfs")
        self.jobs = VolumeJobs(AgentsApiLink(client), self.manager, every=0)  # type: ignore[arg-type]

    def close(self) -> None:
        self.jobs.close()
        for volume_id in self.manager.layout.on_disk():
            self.manager.driver.unmount(volume_id)
        shutil.rmtree(self.manager.layout.run_dir, ignore_errors=True)


@pytest.fixture
def hosts(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> Iterator[dict[str, FakeAgentHost]]:
    """Two joined hosts reporting gocryptfs; each polls for jobs as its agent's loop does."""
    h = installation.headers
    agents = create_agent_app(control_plane)
    made: dict[str, FakeAgentHost] = {}
    for name in ("host-b", "host-c"):
        joined = _join(api, _join_token(api, h), name=name).json()
        client = TestClient(_as_host(agents, joined["certificate"]), raise_server_exceptions=False)
        client.__enter__()
        assert client.get("/agent/v1/volumes", params={"backend": "gocryptfs"}).status_code == 200
        made[name] = FakeAgentHost(name, client, tmp_path / f"{name}-{secrets.token_hex(3)}")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for host in made.values():
                host.jobs.poll()
            stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join()
        for host in made.values():
            host.close()
            host.client.__exit__(None, None, None)


def _key(cp: ControlPlane, volume_id: str) -> bytes:
    with cp.db.read() as session:
        row = session.get(Volume, volume_id)
        assert row is not None and row.key_wrapped is not None
        return open_volume_key(cp.keyring, volume_id, row.key_wrapped)


def _mount(cp: ControlPlane, host: FakeAgentHost, volume_id: str) -> Path:
    """As the host does when a machine holding the volume starts (key held in memory)."""
    spec = VolumeSpec(volume_id, 64, "gocryptfs")
    return host.manager.driver.mount(spec, _key(cp, volume_id), owner=0)


def _events(cp: ControlPlane, action: str) -> list[dict[str, Any]]:
    with cp.db.read() as session:
        rows = session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        return [{"outcome": e.outcome, **json.loads(e.detail)} for e in rows]


def test_snapshot_fork_backup_restore_elsewhere_and_drill(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, FakeAgentHost],
    rest_server: RestServer,
) -> None:
    cp, h = control_plane, installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    made = api.post(
        "/v1/apps/web/volumes", headers=h, json={"name": "data", "size": "64mb", "host": "host-c"}
    )
    assert made.status_code == 201, made.text
    vol = made.json()["id"]
    data = _mount(cp, hosts["host-c"], vol)
    (data / "canary.txt").write_bytes(CANARY)

    snap = api.post(f"/v1/apps/web/volumes/{vol}/snapshots", headers=h)
    assert snap.status_code == 201, snap.text
    assert snap.json()["consistent"] == "frozen"  # taken while "the machine" had it mounted
    listed = api.get("/v1/apps/web/volumes/data/snapshots", headers=h).json()
    assert [s["id"] for s in listed] == [snap.json()["id"]]

    fork = api.post(
        f"/v1/apps/web/volumes/{vol}/fork",
        headers=h,
        json={"snapshot": snap.json()["id"], "name": "copy"},
    )
    assert fork.status_code == 201, fork.text
    forked = fork.json()["volume"]
    assert (_mount(cp, hosts["host-c"], forked) / "canary.txt").read_bytes() == CANARY

    no_repo = api.post(f"/v1/apps/web/volumes/{vol}/backups", headers=h)
    assert no_repo.status_code == 404 and "backups repo set" in no_repo.text
    repo = api.put(
        "/v1/orgs/acme/backups/repo",
        headers=h,
        json={
            "url": rest_server.url("acme"),
            "credential": {
                "kind": "basic",
                "user": rest_server.user,
                "secret": rest_server.password,
            },
        },
    )
    assert repo.status_code == 200, repo.text
    backup = api.post(f"/v1/apps/web/volumes/{vol}/backups", headers=h)
    assert backup.status_code == 201, backup.text
    backup_id = backup.json()["backup_id"]
    with cp.db.read() as session:
        row = session.get(BackupRepoRow, made.json()["app"] and _org_id(cp))
        assert row is not None and row.last_success_at is not None
    listed_backups = api.get("/v1/orgs/acme/backups", headers=h).json()
    assert any(f"volume:{vol}" in b["tags"] for b in listed_backups)

    # Onto the other host: a new volume there, opened with the same key.
    restored = api.post(
        f"/v1/apps/web/volumes/{vol}/backups/restore",
        headers=h,
        json={"backup": backup_id, "name": "restored", "host": "host-b"},
    )
    assert restored.status_code == 201, restored.text
    new = restored.json()["volume"]
    shown = api.get(f"/v1/apps/web/volumes/{new}", headers=h).json()
    assert (shown["host"], shown["state"]) == ("host-b", "ready")
    assert (_mount(cp, hosts["host-b"], new) / "canary.txt").read_bytes() == CANARY

    drill = api.post(f"/v1/apps/web/volumes/{vol}/backups/drill", headers=h, json={})
    assert drill.status_code == 200, drill.text
    assert drill.json()["ok"] is True and drill.json()["check_ok"] is True
    evidence = _events(cp, "volume.job.drill")
    assert evidence[-1]["outcome"] == "success" and evidence[-1]["ok"] is True
    assert evidence[-1]["bytes"] > 0 and evidence[-1]["restore_seconds"] is not None
    assert evidence[-1]["expected_sha256"] == evidence[-1]["restored_sha256"]

    # Restoring a snapshot over a volume in use is refused by its host.
    refused = api.post(
        f"/v1/apps/web/volumes/{vol}/snapshots/{snap.json()['id']}/restore", headers=h
    )
    assert refused.status_code == 409 and "in use" in refused.text
    # Nothing of the repository's secrets reached the store or the audit trail.
    password = _password(cp)
    dump = "\n".join(
        json.dumps(e) for a in ("volume.job.backup", "backups.run") for e in _events(cp, a)
    )
    assert password not in dump and rest_server.password not in dump
    assert password.encode() not in (installation.settings.data_dir / "hangar.db").read_bytes()


def _org_id(cp: ControlPlane) -> str:
    with cp.db.read() as session:
        return str(session.execute(select(BackupRepoRow.org_id)).scalar_one())


def _password(cp: ControlPlane) -> str:
    from hangar.controlplane.backups import open_repo

    return open_repo(cp, _org_id(cp)).repo.password


def test_another_organization_cannot_snapshot_back_up_or_restore_our_volume(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, FakeAgentHost],
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = api.post(
        "/v1/apps/web/volumes", headers=h, json={"name": "data", "size": "64mb", "host": "host-c"}
    ).json()["id"]
    _mount(control_plane, hosts["host-c"], vol)
    snap = api.post(f"/v1/apps/web/volumes/{vol}/snapshots", headers=h).json()["id"]
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    api.post("/v1/apps", headers=eve, json={"name": "evil"})
    for method, path, body in (
        ("GET", f"/v1/apps/web/volumes/{vol}/snapshots", None),
        ("POST", f"/v1/apps/web/volumes/{vol}/snapshots", None),
        ("POST", f"/v1/apps/web/volumes/{vol}/fork", {"snapshot": snap, "name": "mine"}),
        ("POST", f"/v1/apps/web/volumes/{vol}/backups", None),
        ("POST", f"/v1/apps/web/volumes/{vol}/backups/restore", {"name": "mine"}),
        ("POST", f"/v1/apps/web/volumes/{vol}/backups/drill", {}),
        ("POST", f"/v1/apps/evil/volumes/{vol}/snapshots", None),
        ("POST", f"/v1/apps/evil/volumes/{vol}/fork", {"snapshot": snap, "name": "mine"}),
    ):
        r = api.request(method, path, headers=eve, json=body)
        assert r.status_code in (403, 404), (path, r.status_code, r.text)
    # A host cannot report (or steal the result of) another host's job.
    with control_plane.db.read() as session:
        from hangar.store.tables import VolumeJob as JobRow

        job_id = session.execute(select(JobRow.id)).scalars().first()
    assert job_id is not None
    other = hosts["host-b"].client.post(
        f"/agent/v1/volume-jobs/{job_id}/done",
        json={"job_id": job_id, "ok": False, "error": "forged", "result": {}},
    )
    assert other.status_code == 404


def test_the_schedule_snapshots_daily_and_backs_up_when_the_repository_is_due(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, FakeAgentHost],
    rest_server: RestServer,
) -> None:
    import datetime as dt

    from hangar.controlplane.volumejobs import due, wait
    from hangar.store.tables import VolumeJob as JobRow
    from hangar.store.tables import VolumeSnapshotRow

    cp, h = control_plane, installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = api.post(
        "/v1/apps/web/volumes", headers=h, json={"name": "data", "size": "64mb", "host": "host-c"}
    ).json()["id"]
    assert due(cp) == []  # never mounted: nothing to snapshot yet
    (_mount(cp, hosts["host-c"], vol) / "canary.txt").write_bytes(CANARY)
    with cp.db.write() as session:
        row = session.get(Volume, vol)
        assert row is not None
        row.state = "ready"  # as the first key delivery marks it
    api.put(
        "/v1/orgs/acme/backups/repo",
        headers=h,
        json={
            "url": rest_server.url("acme"),
            "credential": {
                "kind": "basic",
                "user": rest_server.user,
                "secret": rest_server.password,
            },
        },
    )
    [first] = due(cp)
    wait(cp, first, timeout=120)
    [backup] = due(cp)  # today's snapshot exists, not backed up, and the repository is due
    wait(cp, backup, timeout=120)
    with cp.db.read() as session:
        snaps = list(session.execute(select(VolumeSnapshotRow)).scalars())
        repo = session.execute(select(BackupRepoRow)).scalar_one()
    assert [(s.reason, s.backup_id is not None) for s in snaps] == [("schedule", True)]
    assert repo.last_success_at is not None
    assert due(cp) == []  # backed up, and today's snapshot is fresh
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1, minutes=1)
    [later] = due(cp, tomorrow)  # a day later: the next snapshot, kept as the schedule says
    wait(cp, later, timeout=120)
    path = f"/v1/apps/web/volumes/{vol}/snapshot-schedule"
    assert api.get(path, headers=h).json() == {"scheduled": True, "keep_days": 5}
    for bad in ({"keep_days": 0}, {"keep_days": 61}, {"keep": 3}):
        assert api.put(path, headers=h, json=bad).status_code == 422
    changed = api.put(path, headers=h, json={"scheduled": False, "keep_days": 30})
    assert changed.json() == {"scheduled": False, "keep_days": 30}
    filed = due(cp, tomorrow + dt.timedelta(days=2))
    with cp.db.read() as session:
        kinds = [session.get(JobRow, job).kind for job in filed]  # type: ignore[union-attr]
    assert kinds == ["backup"]  # off: no new snapshot; the newest still goes to the repository
    wait(cp, filed[0], timeout=120)


def test_export_streams_a_decrypted_tar_to_admins_only_and_is_audited(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    hosts: dict[str, FakeAgentHost],
) -> None:
    import io
    import tarfile

    cp, h = control_plane, installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    vol = api.post(
        "/v1/apps/web/volumes", headers=h, json={"name": "data", "size": "64mb", "host": "host-c"}
    ).json()["id"]
    (_mount(cp, hosts["host-c"], vol) / "canary.txt").write_bytes(CANARY)
    snap = api.post(f"/v1/apps/web/volumes/{vol}/snapshots", headers=h).json()["id"]
    path = f"/v1/apps/web/volumes/{vol}/snapshots/{snap}/export"
    got = api.get(path, headers=h)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
        member = tar.extractfile("./canary.txt")
        assert member is not None and member.read() == CANARY
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "vic@example.com", "role": "member"}
    )
    vic = bearer(mint_token(cp, "vic@example.com", kind="org", org="acme"))
    assert api.get(path, headers=vic).status_code == 403  # members may not take data out
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(cp, "eve@example.com", kind="org", org="globex"))
    assert api.get(path, headers=eve).status_code in (403, 404)
    missing = api.get(f"/v1/apps/web/volumes/{vol}/snapshots/snap_0000000000/export", headers=h)
    assert missing.status_code == 404
    delivered = _events(cp, "volume.deliver_keys")
    assert [e.get("for") for e in delivered] == ["export"]  # one export, one key delivery
    exported = _events(cp, "volume.job.export")
    assert exported[-1]["ok"] is True and exported[-1]["bytes"] == len(got.content)
    assert len(_events(cp, "volume.snapshot.export")) == 1
    # The app destroyed: its volumes' snapshots, jobs and schedules go with them.
    api.put(f"/v1/apps/web/volumes/{vol}/snapshot-schedule", headers=h, json={"keep_days": 9})
    gone = api.delete("/v1/apps/web", headers=h)
    assert gone.status_code in (200, 204), gone.text
    from hangar.store.tables import VolumeJob as JobRow
    from hangar.store.tables import VolumeSnapshotPolicy, VolumeSnapshotRow

    with cp.db.read() as session:
        for table in (JobRow, VolumeSnapshotRow, VolumeSnapshotPolicy):
            assert session.execute(select(table)).first() is None, table


def test_a_job_its_host_never_finishes_is_given_up_and_frees_the_schedule(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    import datetime as dt

    from hangar.controlplane.volumejobs import JOB_GIVE_UP, due
    from hangar.store.tables import VolumeJob as JobRow

    cp, h = control_plane, installation.headers
    agents = create_agent_app(cp)
    joined = _join(api, _join_token(api, h), name="host-d").json()
    with TestClient(_as_host(agents, joined["certificate"])) as host:
        host.get("/agent/v1/volumes", params={"backend": "gocryptfs"})
        api.post("/v1/apps", headers=h, json={"name": "web"})
        vol = api.post(
            "/v1/apps/web/volumes", headers=h, json={"name": "data", "host": "host-d"}
        ).json()["id"]
        with cp.db.write() as session:
            row = session.get(Volume, vol)
            assert row is not None
            row.state = "ready"
        [job] = due(cp)
        # The host takes it, then dies: no report ever comes.
        taken = host.post("/agent/v1/volume-jobs/take", json={"public_key": _public_key()})
        assert [j["job"]["id"] for j in taken.json()] == [job]
    assert due(cp) == []  # still running: the volume's schedule waits for it
    later = dt.datetime.now(dt.UTC) + JOB_GIVE_UP + dt.timedelta(minutes=1)
    [again] = due(cp, later)
    with cp.db.read() as session:
        old = session.get(JobRow, job)
        assert old is not None and old.state == "failed" and "did not finish" in str(old.error)
    assert again != job


def _public_key() -> str:
    from hangar.crypto.secretbox import Opener

    return Opener().public_b64()
