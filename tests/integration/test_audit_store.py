"""The audit trail in a real store: atomic with changes, fail closed, tamper-evident."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update

import hangar.store
from hangar.api.app import create_app
from hangar.audit.log import chains, verify_stored_chain
from hangar.controlplane.state import ControlPlane
from hangar.crypto.signing import public_key_from_pem
from hangar.store.tables import App, AuditCheckpoint, AuditEvent, AuditHead
from tests.conftest import Installation, make_installation


def verify_all(cp: ControlPlane) -> dict[str, tuple[bool, int | None]]:
    key = public_key_from_pem(cp.audit_public_pem)
    with cp.db.read() as session:
        return {
            c: (r.ok, r.first_bad_seq)
            for c in chains(session)
            for r in [verify_stored_chain(session, c, key)]
        }


def org_chain(api: TestClient, installation: Installation) -> str:
    return str(api.get("/v1/orgs/acme", headers=installation.headers).json()["id"])


def test_every_mutation_is_an_event_with_context(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    r = api.post("/v1/apps", headers=h, json={"name": "web"})
    chain = org_chain(api, installation)
    with control_plane.db.read() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.chain == chain, AuditEvent.action == "app.create")
        ).scalar_one()
    assert event.actor == "admin@example.com" and event.target == "web"
    assert event.outcome == "success" and event.token_id == installation.admin_token_id
    assert event.request_id == r.headers["x-request-id"] and event.client_addr == "testclient"
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "b@example.com", "role": "viewer"})
    api.patch("/v1/orgs/acme/members/b@example.com", headers=h, json={"role": "member"})
    api.delete("/v1/orgs/acme/members/b@example.com", headers=h)
    tok = api.post("/v1/tokens", headers=h, json={"kind": "readonly", "org": "acme"}).json()
    api.delete(f"/v1/tokens/{tok['id']}", headers=h)
    api.delete("/v1/apps/web", headers=h)
    actions = [
        e["action"]
        for e in api.get("/v1/audit/events", headers=h, params={"org": "acme"}).json()["items"]
    ]
    assert actions[-7:] == [
        "app.create",
        "member.add",
        "member.set_role",
        "member.remove",
        "token.create",
        "token.revoke",
        "app.destroy",
    ]
    assert all(ok for ok, _ in verify_all(control_plane).values())


def test_mutation_fails_when_its_audit_event_cannot_be_written(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(control_plane.audit, "record", broken)
    r = api.post("/v1/apps", headers=installation.headers, json={"name": "unaudited"})
    assert r.status_code == 500
    assert "audit store unavailable" not in r.text  # unexpected errors are not echoed
    monkeypatch.undo()
    with control_plane.db.read() as session:
        assert session.execute(select(App).where(App.name == "unaudited")).first() is None


def test_a_failed_change_leaves_no_event(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    with control_plane.db.read() as session:
        before = session.execute(select(AuditHead.seq).where(AuditHead.chain != "system")).all()
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 409
    with control_plane.db.read() as session:
        after = session.execute(select(AuditHead.seq).where(AuditHead.chain != "system")).all()
    assert before == after


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "cut-tail"])
def test_tampering_in_the_database_is_detected(
    tmp_path: Path, database_url: str, tamper: str
) -> None:
    inst = make_installation(tmp_path / "data", database_url, audit_checkpoint_every=5)
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp)) as api:
        for i in range(12):
            assert (
                api.post("/v1/apps", headers=inst.headers, json={"name": f"a{i}"}).status_code
                == 201
            )
        chain = org_chain(api, inst)
    assert verify_all(cp)[chain] == (True, None)
    with cp.db.write() as session:
        where = AuditEvent.chain == chain
        if tamper == "edit":
            session.execute(
                update(AuditEvent)
                .where(where, AuditEvent.seq == 4)
                .values(actor="someone-else@example.com")
            )
        elif tamper == "delete":
            session.execute(delete(AuditEvent).where(where, AuditEvent.seq == 6))
        elif tamper == "reorder":
            rows = {
                r.seq: r
                for r in session.execute(
                    select(AuditEvent).where(where, AuditEvent.seq.in_([7, 8]))
                ).scalars()
            }
            a, b = rows[7], rows[8]
            fields = ("time", "target", "hash", "prev_hash", "request_id")
            va = {f: getattr(a, f) for f in fields}
            for f in fields:
                setattr(a, f, getattr(b, f))
                setattr(b, f, va[f])
        else:
            # Cut the last events behind the shutdown checkpoint, and fix up the head.
            session.execute(delete(AuditEvent).where(where, AuditEvent.seq > 9))
    result = verify_all(cp)[chain]
    expected = {"edit": 4, "delete": 6, "reorder": 7, "cut-tail": 10}[tamper]
    assert result == (False, expected)
    cp.close()


def test_checkpoints_every_n_events_and_on_shutdown(tmp_path: Path, database_url: str) -> None:
    inst = make_installation(tmp_path / "data", database_url, audit_checkpoint_every=3)
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp)) as api:
        for i in range(7):
            api.post("/v1/apps", headers=inst.headers, json={"name": f"a{i}"})
        chain = org_chain(api, inst)
        with cp.db.read() as session:
            during = sorted(
                session.execute(
                    select(AuditCheckpoint.seq).where(AuditCheckpoint.chain == chain)
                ).scalars()
            )
    assert during == [3, 6]
    with cp.db.read() as session:
        after = sorted(
            session.execute(
                select(AuditCheckpoint.seq).where(AuditCheckpoint.chain == chain)
            ).scalars()
        )
    assert after == [3, 6, 8]  # 1 org.create + 7 app.create, signed at shutdown
    cp.close()


def test_concurrent_writers_keep_one_valid_chain(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    errors: list[int] = []

    def worker(n: int) -> None:
        for i in range(8):
            r = api.post("/v1/apps", headers=installation.headers, json={"name": f"w{n}-{i}"})
            if r.status_code != 201:
                errors.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = verify_all(control_plane)
    assert all(ok for ok, _ in result.values())
    with control_plane.db.read() as session:
        head = session.execute(
            select(AuditHead).where(AuditHead.chain == org_chain(api, installation))
        ).scalar_one()
    assert head.seq == 1 + 32


def test_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    cp = ControlPlane.open(make_installation(tmp_path / "data").settings)
    with cp.db.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    cp.close()


def test_migrations_are_idempotent(control_plane: ControlPlane) -> None:
    control_plane.db.migrate()
    control_plane.db.migrate()
    script = ScriptDirectory(str(Path(hangar.store.__file__).parent / "migrations"))
    with control_plane.db.read() as session:
        current = session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert current == script.get_current_head() == "0020"
