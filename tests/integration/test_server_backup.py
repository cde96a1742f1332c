"""``hangar server backup`` and ``restore``: real restic, a real REST server, a real KEK rotation.

A restore must pass ``hangar audit verify``; a backup from before a
``rotate-kek`` opens only with the KEK of its time.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.cli.main import run
from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.serverbackup import last_server_backup
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, AuditEvent
from tests.backup_targets import RestServer, rest_server
from tests.conftest import Installation

__all__ = ["rest_server"]

pytestmark = pytest.mark.slow


@pytest.fixture
def database_url() -> str:
    return ""


def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_restored_server_passes_audit_verify_and_old_backups_need_the_old_kek(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    rest_server: RestServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    data = installation.settings.data_dir
    h = installation.headers
    for name in ("web", "worker"):
        assert api.post("/v1/apps", headers=h, json={"name": name}).status_code == 201
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "backup-repo",
        rest_server.url("server"),
        "--data-dir",
        str(data),
        "--user",
        rest_server.user,
        "--keep-last",
        "10",
        "--json",
        stdin=rest_server.password + "\n",
    )
    assert code == 0, err
    assert json.loads(out)["created"] is True
    repo_file = (data / "backup-repo.json").read_text()
    assert rest_server.password not in repo_file

    code, out, err = cli(capsys, monkeypatch, "server", "backup", "--data-dir", str(data), "--json")
    assert code == 0, err
    first = json.loads(out)
    assert set(first["files"]) == {
        "hangar.db",
        "ca.crt",
        "ca.key.wrapped",
        "audit-signing.key.wrapped",
        "audit-signing.pub",
        "api.crt",
        "api.key",
    }
    assert last_server_backup(control_plane) is not None
    # What the repository holds never includes the KEK, nor a plaintext password.
    for path in rest_server.root.rglob("*"):
        if path.is_file():
            assert (data / "kek.key").read_bytes() not in path.read_bytes()

    old_kek = tmp_path / "kek-before-rotation.key"
    shutil.copy2(data / "kek.key", old_kek)
    old_repo_file = tmp_path / "backup-repo-before-rotation.json"
    shutil.copy2(data / "backup-repo.json", old_repo_file)
    rotate_kek(control_plane)
    assert (data / "backup-repo.json").read_text() != repo_file  # re-wrapped
    assert api.post("/v1/apps", headers=h, json={"name": "after"}).status_code == 201
    code, out, err = cli(capsys, monkeypatch, "server", "backup", "--data-dir", str(data), "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["kek_id"] != first["kek_id"]

    # The newest backup, with today's KEK and repository file: a working installation.
    fresh = tmp_path / "restored"
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "restore",
        "--data-dir",
        str(fresh),
        "--kek-file",
        str(data / "kek.key"),
        "--repo-config",
        str(data / "backup-repo.json"),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["snapshot_id"].startswith(second["snapshot_id"])
    code, out, err = cli(capsys, monkeypatch, "audit", "verify", "--data-dir", str(fresh))
    assert code == 0, out + err
    restored = ControlPlane.open(installation.settings.model_copy(update={"data_dir": fresh}))
    try:
        with restored.db.read() as session:
            names = set(session.execute(select(App.name)).scalars())
            actions = [e.action for e in session.execute(select(AuditEvent)).scalars()]
    finally:
        restored.close()
    assert names == {"web", "worker", "after"}
    assert "server.restore" in actions

    # The first backup, taken before the rotation: today's KEK does not open its keys...
    refused = tmp_path / "refused"
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "restore",
        "--data-dir",
        str(refused),
        "--kek-file",
        str(data / "kek.key"),
        "--repo-config",
        str(data / "backup-repo.json"),
        "--backup",
        first["snapshot_id"],
    )
    assert code != 0
    assert "before a rotate-kek" in err and first["kek_id"] in err
    assert not (refused / "hangar.db").exists()
    # ...the KEK kept from its time does, with the repository file of its time.
    older = tmp_path / "older"
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "restore",
        "--data-dir",
        str(older),
        "--kek-file",
        str(old_kek),
        "--repo-config",
        str(old_repo_file),
        "--backup",
        first["snapshot_id"],
    )
    assert code == 0, err
    code, out, err = cli(capsys, monkeypatch, "audit", "verify", "--data-dir", str(older))
    assert code == 0, out + err
    with sqlite3.connect(older / "hangar.db") as db:
        assert {r[0] for r in db.execute("select name from apps")} == {"web", "worker"}

    # A directory that holds an installation is never overwritten.
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "restore",
        "--data-dir",
        str(data),
        "--repo-config",
        str(data / "backup-repo.json"),
    )
    assert code != 0 and "already holds an installation" in err


def test_backup_without_a_repository_says_how_to_choose_one(
    installation: Installation,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = installation.settings.data_dir
    code, _, err = cli(capsys, monkeypatch, "server", "backup", "--data-dir", str(data))
    assert code != 0
    assert "error: no backup repository is configured" in err
    assert "hint: hangar server backup-repo" in err


@pytest.mark.postgres
def test_a_postgresql_store_is_dumped_and_restored_into_an_empty_database(
    tmp_path: Path,
    postgres: Any,
    rest_server: RestServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import make_installation

    source_url = postgres.url(postgres.create_database())
    inst = make_installation(tmp_path / "data", source_url)
    data = inst.settings.data_dir
    code, _, err = cli(
        capsys,
        monkeypatch,
        "server",
        "backup-repo",
        rest_server.url("pg"),
        "--data-dir",
        str(data),
        "--user",
        rest_server.user,
        stdin=rest_server.password + "\n",
    )
    assert code == 0, err
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "backup",
        "--data-dir",
        str(data),
        "--database-url",
        source_url,
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["database"] == "postgresql" and "hangar.pgdump" in result["files"]
    target_url = postgres.url(postgres.create_database())
    fresh = tmp_path / "restored"
    code, out, err = cli(
        capsys,
        monkeypatch,
        "server",
        "restore",
        "--data-dir",
        str(fresh),
        "--database-url",
        target_url,
        "--kek-file",
        str(data / "kek.key"),
        "--repo-config",
        str(data / "backup-repo.json"),
    )
    assert code == 0, err
    code, out, err = cli(
        capsys,
        monkeypatch,
        "audit",
        "verify",
        "--data-dir",
        str(fresh),
        "--database-url",
        target_url,
    )
    assert code == 0, out + err
