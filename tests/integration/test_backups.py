"""Organizations' restic repositories, against real restic and real backends on loopback.

The REST server is ``rclone serve restic``, S3 is moto's server; tests break
them as an attacker or a fault would: a corrupted pack, a backup killed
with SIGKILL, another organization reaching for the repository, the
password looked for on disk, in the store and in argv.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.backups.restic import Repository, Restic
from hangar.controlplane.backups import open_repo, password_purpose
from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.state import ControlPlane
from hangar.errors import HangarError
from hangar.store.tables import AuditEvent, BackupRepoRow
from tests.backup_targets import RestServer, S3Server, rest_server, s3_server
from tests.conftest import Installation, bearer, make_installation, mint_token

__all__ = ["rest_server", "s3_server"]

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url() -> str:
    return ""


@pytest.fixture
def installation(tmp_path: Path, database_url: str) -> Installation:
    """The test backends listen on loopback: the operator allows it by name."""
    return make_installation(
        tmp_path / "data",
        database_url,
        allowed_backup_hosts=["127.0.0.1"],
        backup_local_root=tmp_path / "local-backups",
    )


def set_rest(api: TestClient, inst: Installation, server: RestServer, path: str = "acme"):  # type: ignore[no-untyped-def]
    return api.put(
        "/v1/orgs/acme/backups/repo",
        headers=inst.headers,
        json={
            "url": server.url(path),
            "credential": {"kind": "basic", "user": server.user, "secret": server.password},
        },
    )


def some_data(root: Path, files: int = 3, size: int = 64 << 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        (root / f"f{n}.bin").write_bytes(os.urandom(size))
    return root


def test_a_rest_repository_is_created_with_a_password_nobody_is_shown(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    rest_server: RestServer,
) -> None:
    r = set_rest(api, installation, rest_server)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["kind"] == "rest" and view["auth"] == "basic"
    assert rest_server.password not in r.text
    assert (rest_server.repo_dir("acme") / "config").exists()
    shown = api.get("/v1/orgs/acme/backups/repo", headers=installation.headers)
    assert shown.json()["retention"] == {"daily": 7, "weekly": 4, "monthly": 6}
    assert api.get("/v1/orgs/acme/backups", headers=installation.headers).json() == []
    restic = open_repo(control_plane, _org_id(control_plane))
    restic.backup(some_data(installation.settings.data_dir.parent / "src"), tags=["t"])
    listed = api.get("/v1/orgs/acme/backups", headers=installation.headers).json()
    assert [b["tags"] for b in listed] == [["t"]]
    check = api.post("/v1/orgs/acme/backups/check", headers=installation.headers, json={})
    assert check.json()["ok"] is True
    # The password and the REST server's secret: nowhere on disk in plaintext.
    password = restic.repo.password
    data_dir = installation.settings.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert password.encode() not in blob, path
            assert rest_server.password.encode() not in blob, path
    with sqlite3.connect(data_dir / "hangar.db") as db:
        dump = "\n".join(db.iterdump())
    assert password not in dump and rest_server.password not in dump
    with control_plane.db.read() as session:
        events = list(session.execute(select(AuditEvent)).scalars())
    assert "backups.repo.set" in {e.action for e in events}
    details = [str(e.detail) for e in events]
    assert not any(password in d or rest_server.password in d for d in details)


def _org_id(cp: ControlPlane) -> str:
    with cp.db.read() as session:
        return str(session.execute(select(BackupRepoRow.org_id)).scalar_one())


def test_an_s3_repository_on_moto(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    s3_server: S3Server,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level("DEBUG")
    secret = "s3-secret-" + os.urandom(8).hex()
    body = {
        "url": s3_server.url("acme-backups"),
        "credential": {"kind": "s3", "user": "AKIATEST", "secret": secret, "region": "us-east-1"},
        "retention": {"daily": 3, "weekly": 0, "monthly": 0},
    }
    r = api.put("/v1/orgs/acme/backups/repo", headers=installation.headers, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "s3" and secret not in r.text
    restic = open_repo(control_plane, _org_id(control_plane))
    restic.backup(some_data(installation.settings.data_dir.parent / "src"), tags=["v"])
    assert len(api.get("/v1/orgs/acme/backups", headers=installation.headers).json()) == 1
    no_keys = api.put(
        "/v1/orgs/acme/backups/repo",
        headers=installation.headers,
        json={"url": s3_server.url("acme-backups")},
    )
    assert no_keys.status_code == 422 or no_keys.status_code == 400
    assert "access key" in no_keys.text
    # The S3 secret and restic's password: in no argv, file, row or log line.
    password = restic.repo.password
    proc, errors = restic.backup_process(some_data(tmp_path / "more", files=20, size=1 << 20))
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline and password.encode() not in cmdline
    finally:
        restic.finish_backup(proc, errors)
    for path in installation.settings.data_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert secret.encode() not in blob and password.encode() not in blob, path
    with sqlite3.connect(installation.settings.data_dir / "hangar.db") as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump and password not in dump
    assert secret not in caplog.text and password not in caplog.text
    # Its errors name the repository, never its secrets.
    wrong = Restic(
        Repository(
            s3_server.url("acme-backups"),
            "x",
            s3_key_id="AKIATEST",
            s3_secret=secret,
            s3_region="us-east-1",
        )
    )
    with pytest.raises(HangarError) as failed:
        wrong.ensure()
    assert secret not in str(failed.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rest:http://10.1.2.3:8000/x", "unreachable"),
        ("rest:http://user:pw@127.0.0.1:8000/x", "cannot carry credentials"),
        ("sftp:backup@127.0.0.1:/srv/x", "SFTP"),
        ("rclone:remote:x", "unsupported"),
        ("https://s3.example/bucket", "say which kind"),
        ("../../etc", "not a repository name"),
        ("/srv/backups/other-org", "not a repository name"),
        ("s3:http://127.0.0.1:9/", "names its bucket"),
    ],
)
def test_repositories_the_control_plane_must_not_reach_are_refused(
    api: TestClient, installation: Installation, url: str, says: str
) -> None:
    r = api.put("/v1/orgs/acme/backups/repo", headers=installation.headers, json={"url": url})
    assert r.status_code in (400, 422), r.text
    assert says in r.text
    assert api.get("/v1/orgs/acme/backups/repo", headers=installation.headers).status_code == 404


def test_a_local_repository_lives_under_the_organizations_own_directory(
    api: TestClient, installation: Installation, tmp_path: Path
) -> None:
    r = api.put("/v1/orgs/acme/backups/repo", headers=installation.headers, json={"url": "nightly"})
    assert r.status_code == 200, r.text
    location = Path(r.json()["location"])
    root = tmp_path / "local-backups"
    assert location.parent.parent == root and (location / "config").exists()
    assert location.parent.name.startswith("org_")


def test_another_organization_cannot_list_check_or_take_over_the_repository(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    rest_server: RestServer,
) -> None:
    assert set_rest(api, installation, rest_server).status_code == 200
    h = installation.headers
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    eve = bearer(mint_token(control_plane, "eve@example.com", kind="org", org="globex"))
    assert api.get("/v1/orgs/acme/backups", headers=eve).status_code in (403, 404)
    assert api.get("/v1/orgs/acme/backups/repo", headers=eve).status_code in (403, 404)
    assert api.post("/v1/orgs/acme/backups/check", headers=eve, json={}).status_code in (403, 404)
    stolen = {
        "url": rest_server.url("acme"),
        "credential": {"kind": "basic", "user": rest_server.user, "secret": rest_server.password},
    }
    assert api.put("/v1/orgs/acme/backups/repo", headers=eve, json=stolen).status_code in (
        403,
        404,
    )
    # Even knowing the server's address and credential, globex's own password
    # does not open acme's repository: pointing at it is refused.
    taken = api.put("/v1/orgs/globex/backups/repo", headers=eve, json=stolen)
    assert taken.status_code >= 400 and "does not open it" in taken.text
    assert api.get("/v1/orgs/globex/backups/repo", headers=eve).status_code == 404
    # A member may list, not choose the repository.
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "vic@example.com", "role": "member"}
    )
    vic = bearer(mint_token(control_plane, "vic@example.com", kind="org", org="acme"))
    assert api.get("/v1/orgs/acme/backups", headers=vic).status_code == 200
    assert set_rest(api, installation, rest_server).status_code == 200
    as_member = api.put("/v1/orgs/acme/backups/repo", headers=vic, json=stolen)
    assert as_member.status_code == 403


def test_a_corrupted_pack_is_found_by_check_and_audited(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    rest_server: RestServer,
) -> None:
    assert set_rest(api, installation, rest_server).status_code == 200
    restic = open_repo(control_plane, _org_id(control_plane))
    restic.backup(some_data(installation.settings.data_dir.parent / "src", files=4), tags=["t"])
    packs = sorted((rest_server.repo_dir("acme") / "data").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    assert packs
    for pack in packs:  # flip one byte in the middle of every pack, as a failing disk would
        blob = bytearray(pack.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        pack.write_bytes(bytes(blob))
    structural = api.post("/v1/orgs/acme/backups/check", headers=installation.headers, json={})
    full = api.post(
        "/v1/orgs/acme/backups/check",
        headers=installation.headers,
        json={"read_data_subset": "100%"},
    )
    assert full.status_code == 200 and full.json()["ok"] is False, full.text
    assert structural.status_code == 200
    with control_plane.db.read() as session:
        events = [
            e.detail
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.action == "backups.check")
            ).scalars()
        ]
    assert {"ok": False, "read_data_subset": "100%"}.items() <= json.loads(events[-1]).items()


def test_a_backup_killed_with_sigkill_leaves_the_repository_usable(tmp_path: Path) -> None:
    repo = Restic(Repository(str(tmp_path / "repo"), "pw-" + os.urandom(8).hex()))
    repo.ensure()
    src = some_data(tmp_path / "src", files=40, size=1 << 20)
    proc, errors = repo.backup_process(src, tags=["t"])
    assert proc.stdout is not None
    proc.stdout.readline()  # restic has started and holds its lock
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert repo.repo.password.encode() not in cmdline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    errors.close()
    assert list((tmp_path / "repo" / "locks").iterdir()), "the killed backup left its lock"
    done = repo.backup(src, tags=["t"])  # a non-exclusive lock does not block a backup
    assert done.snapshot_id
    assert repo.check().ok  # check removes the stale lock first
    assert [s.tags for s in repo.snapshots()] == [["t"]]


def test_kek_rotation_rewraps_the_repository_password(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    rest_server: RestServer,
) -> None:
    assert set_rest(api, installation, rest_server).status_code == 200
    org_id = _org_id(control_plane)
    with control_plane.db.read() as session:
        before = session.get(BackupRepoRow, org_id)
        assert before is not None
        old = before.password
    password = control_plane.keyring.unwrap(old, purpose=password_purpose(org_id))
    rotate_kek(control_plane)
    with control_plane.db.read() as session:
        after = session.get(BackupRepoRow, org_id)
        assert after is not None and after.password != old
    assert open_repo(control_plane, org_id).repo.password.encode() == password
    assert api.get("/v1/orgs/acme/backups", headers=installation.headers).status_code == 200


def test_the_last_success_metric_the_alert_reads(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    from hangar.controlplane.metrics import ControlPlaneCollector

    def samples() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in ControlPlaneCollector(control_plane.db).collect():
            for sample in family.samples:
                if "backup" in sample.name:
                    found[sample.name + str(sorted(sample.labels.items()))] = sample.value
        return found

    assert samples() == {}
    r = api.put("/v1/orgs/acme/backups/repo", headers=installation.headers, json={"url": "n"})
    assert r.status_code == 200, r.text
    org_id = _org_id(control_plane)
    key = f"hangar_backup_last_success_timestamp_seconds[('org', '{org_id}')]"
    with control_plane.db.write() as session:
        row = session.get(BackupRepoRow, org_id)
        assert row is not None
        created = row.created_at.timestamp()
        success = row.created_at.replace(year=2031)
    # Until the first backup, the clock runs from when the repository was set.
    assert samples() == {key: pytest.approx(created)}
    with control_plane.db.write() as session:
        row = session.get(BackupRepoRow, org_id)
        assert row is not None
        row.last_success_at = success
    assert samples() == {key: pytest.approx(success.timestamp())}
