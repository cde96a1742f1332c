"""Secrets through the API, tried as an attacker would: the value is never seen again."""

from __future__ import annotations

import json
import secrets as random
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import make_url, select

from hangar.api.app import create_agent_app
from hangar.audit.log import AuditContext
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.secrets import deliver, machine_secrets
from hangar.controlplane.state import ControlPlane
from hangar.crypto.secretbox import Opener
from hangar.errors import IntegrityError, PermissionDenied
from hangar.store.tables import AppKey, AuditEvent, Machine, Secret, SecretVersionValue
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_hosts import _as_host, _join, _join_token
from tests.uploads import upload_layout

HOST_CTX = AuditContext(actor="host:test", token_id=None, request_id=None, client_addr=None)


def _stored(
    installation: Installation, cp: ControlPlane, request: pytest.FixtureRequest
) -> list[bytes]:
    """Every byte the store holds: the SQLite files (with the WAL), or a pg_dump."""
    if cp.db.is_sqlite:
        return [p.read_bytes() for p in installation.settings.data_dir.glob("hangar.db*")]
    pg = request.getfixturevalue("postgres")
    return [pg.dump(str(make_url(installation.settings.database_url).database))]


def _one_off(api: TestClient, h: dict[str, str], tmp_path: Path, app: str) -> dict[str, object]:
    from hangar.images.oci import build_layout, layer_tar

    build_layout(tmp_path / "img", [layer_tar([])])
    made = api.post(
        f"/v1/apps/{app}/machines",
        headers=h,
        json={"image": upload_layout(api, h, app, tmp_path / "img"), "cmd": ["true"]},
    )
    assert made.status_code == 201, made.text
    return dict(made.json())


def test_a_secret_is_write_only_everywhere(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    h = installation.headers
    canary = "canary-" + random.token_hex(16)
    api.post("/v1/apps", headers=h, json={"name": "web"})
    responses = []
    put = api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "DATABASE_URL", "value": canary}, {"name": "B", "value": "b"}]},
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"secrets": ["DATABASE_URL", "B"], "release": None}  # nothing live yet
    responses.append(put.text)
    listed = api.get("/v1/apps/web/secrets", headers=h)
    responses.append(listed.text)
    rows = {r["name"]: r for r in listed.json()}
    assert set(rows) == {"B", "DATABASE_URL"}
    assert (
        rows["DATABASE_URL"]["status"] == "deployed" and len(rows["DATABASE_URL"]["digest"]) == 64
    )
    assert "value" not in rows["DATABASE_URL"]
    responses += [
        api.get("/v1/orgs/acme/audit", headers=h).text,
        api.get("/openapi.json").text,
    ]
    for text in responses:
        assert canary not in text

    # Only the machine's own host gets the value, while the machine is meant to run.
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    machine = _one_off(api, h, tmp_path, "web")
    values = deliver(
        control_plane.db,
        control_plane.keyring,
        control_plane.audit,
        HOST_CTX,
        host_id=str(_host_id(control_plane, str(machine["id"]))),
        machine_id=str(machine["id"]),
    )
    assert values == {"DATABASE_URL": canary, "B": "b"}
    with pytest.raises(PermissionDenied):
        deliver(
            control_plane.db,
            control_plane.keyring,
            control_plane.audit,
            HOST_CTX,
            host_id="host_elsewhere",
            machine_id=str(machine["id"]),
        )
    with control_plane.db.read() as session:
        events = (
            session.execute(select(AuditEvent).where(AuditEvent.action.like("secrets.%")))
            .scalars()
            .all()
        )
    kinds = [(e.action, e.outcome) for e in events]
    assert ("secrets.set", "success") in kinds and ("secrets.deliver", "success") in kinds
    assert ("secrets.deliver", "denied") in kinds
    for event in events:
        assert canary not in event.detail

    for blob in _stored(installation, control_plane, request):
        assert canary.encode() not in blob
    for path in installation.settings.data_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def _host_id(cp: ControlPlane, machine_id: str) -> str:
    with cp.db.read() as session:
        row = session.get(Machine, machine_id)
        assert row is not None
        return row.host_id


def test_tampered_and_moved_ciphertexts_are_refused(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    for app in ("web", "api"):
        api.post("/v1/apps", headers=h, json={"name": app})
        api.put(
            f"/v1/apps/{app}/secrets", headers=h, json={"secrets": [{"name": "K", "value": app}]}
        )
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    machine = _one_off(api, h, tmp_path, "web")
    # Machines receive a secrets version's values: tamper with what is delivered.
    with control_plane.db.write() as session:
        web, other = sorted(
            session.execute(select(SecretVersionValue)).scalars(),
            key=lambda r: r.app_id != _app_id(api, h),
        )
        web.ciphertext, saved = other.ciphertext, web.ciphertext  # api's value in web's row
    with control_plane.db.read() as session:
        row = session.get(Machine, str(machine["id"]))
        assert row is not None
        with pytest.raises(IntegrityError, match="secret K fails authentication"):
            machine_secrets(session, control_plane.keyring, row)
    with control_plane.db.write() as session:
        web = session.execute(
            select(SecretVersionValue).where(
                SecretVersionValue.ciphertext == other.ciphertext,
                SecretVersionValue.app_id == row.app_id,
            )
        ).scalar_one()
        flipped = bytearray(saved)
        flipped[10] ^= 0x40
        web.ciphertext = bytes(flipped)
    with (
        control_plane.db.read() as session,
        pytest.raises(IntegrityError, match="secret K fails authentication"),
    ):
        machine_secrets(session, control_plane.keyring, row)


def _app_id(api: TestClient, h: dict[str, str]) -> str:
    return str(api.get("/v1/apps/web", headers=h).json()["id"])


@pytest.mark.parametrize(
    ("secrets", "words"),
    [
        ([{"name": "1BAD", "value": "x"}], "not an environment variable name"),
        ([{"name": "HANGAR_TOKEN", "value": "x"}], "reserved"),
        ([{"name": "hangar_x", "value": "x"}], "reserved"),
        ([{"name": "BIG", "value": "x" * (64 * 1024 + 1)}], "64 KiB"),
        ([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}], "given twice"),
        ([{"name": "NUL", "value": "a\x00b"}], "NUL"),
        ([{"name": "OK", "value": "fine"}, {"name": "BAD-NAME", "value": "x"}], "BAD-NAME"),
    ],
)
def test_bad_secrets_are_refused_and_nothing_is_stored(
    api: TestClient, installation: Installation, secrets: list[dict[str, str]], words: str
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    refused = api.put("/v1/apps/web/secrets", headers=h, json={"secrets": secrets})
    assert refused.status_code == 422 and words in refused.text
    assert api.get("/v1/apps/web/secrets", headers=h).json() == []


def test_staged_changes_wait_for_deploy(api: TestClient, installation: Installation) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.put("/v1/apps/web/secrets", headers=h, json={"secrets": [{"name": "A", "value": "1"}]})
    api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}], "stage": True},
    )
    gone = api.delete("/v1/apps/web/secrets", headers=h, params={"name": "A", "stage": "true"})
    assert gone.status_code == 200, gone.text
    status = {(r["name"], r["status"]) for r in api.get("/v1/apps/web/secrets", headers=h).json()}
    assert status == {("A", "deployed"), ("A", "staged-unset"), ("B", "staged")}
    done = api.post("/v1/apps/web/secrets/deploy", headers=h).json()
    assert done["secrets"] == ["A", "B"]
    status = {(r["name"], r["status"]) for r in api.get("/v1/apps/web/secrets", headers=h).json()}
    assert status == {("B", "deployed")}
    missing = api.delete("/v1/apps/web/secrets", headers=h, params={"name": "NOPE"})
    assert missing.status_code == 404
    neither = api.delete("/v1/apps/web/secrets", headers=h)
    assert neither.status_code == 422
    assert api.delete("/v1/apps/web/secrets", headers=h, params={"all": "true"}).json()[
        "secrets"
    ] == ["B"]


def test_a_token_for_one_app_cannot_touch_anothers_secrets(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    for app in ("web", "billing"):
        api.post("/v1/apps", headers=h, json={"name": app})
    api.put("/v1/apps/billing/secrets", headers=h, json={"secrets": [{"name": "K", "value": "v"}]})
    web_only = bearer(
        mint_token(control_plane, "admin@example.com", kind="app", org="acme", app="web")
    )
    assert api.get("/v1/apps/web/secrets", headers=web_only).status_code == 200
    # Refused (same organization, app outside the token's scope: 403, audited).
    assert api.get("/v1/apps/billing/secrets", headers=web_only).status_code == 403
    put = api.put(
        "/v1/apps/billing/secrets",
        headers=web_only,
        json={"secrets": [{"name": "K", "value": "x"}]},
    )
    assert put.status_code == 403
    assert (
        api.delete("/v1/apps/billing/secrets", headers=web_only, params={"all": "true"}).status_code
        == 403
    )
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "v@example.com", "role": "viewer"})
    viewer = bearer(mint_token(control_plane, "v@example.com", kind="org", org="acme"))
    assert api.get("/v1/apps/web/secrets", headers=viewer).status_code == 403


def test_a_host_gets_secrets_sealed_and_only_for_its_starting_machines(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "K", "value": "sealed-value"}]},
    )
    joined = _join(api, _join_token(api, h)).json()
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    api.post("/v1/hosts/h1/cordon", headers=h)
    mine = _one_off(api, h, tmp_path, "web")
    api.post("/v1/hosts/h1/uncordon", headers=h)
    api.post("/v1/hosts/host-b/cordon", headers=h)
    theirs = _one_off(api, h, tmp_path, "web")
    agents: FastAPI = create_agent_app(control_plane)
    with TestClient(
        _as_host(agents, joined["certificate"]), raise_server_exceptions=False
    ) as host_b:
        opener = Opener()
        got = host_b.post(
            f"/agent/v1/machines/{mine['id']}/secrets", json={"public_key": opener.public_b64()}
        )
        assert got.status_code == 200 and "sealed-value" not in got.text
        assert opener.open(got.json(), str(mine["id"])) == {"K": "sealed-value"}
        refused = host_b.post(
            f"/agent/v1/machines/{theirs['id']}/secrets", json={"public_key": Opener().public_b64()}
        )
        assert refused.status_code == 403
        api.post(f"/v1/apps/web/machines/{mine['id']}/stop", headers=h)
        stopped = host_b.post(
            f"/agent/v1/machines/{mine['id']}/secrets", json={"public_key": Opener().public_b64()}
        )
        assert stopped.status_code == 403
    with control_plane.db.read() as session:
        denied = (
            session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "secrets.deliver", AuditEvent.outcome == "denied"
                )
            )
            .scalars()
            .all()
        )
    assert sorted(e.target for e in denied) == sorted([str(theirs["id"]), str(mine["id"])])
    assert all(json.loads(e.detail)["host"] == joined["host_id"] for e in denied)


def test_rotating_the_data_key_keeps_values_and_drops_the_old_key(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    assert api.post("/v1/apps/web/secrets/rotate-key", headers=h).status_code == 404  # no key yet
    api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "A", "value": "one"}, {"name": "B", "value": "two"}]},
    )
    api.put(
        "/v1/apps/web/secrets",
        headers=h,
        json={"secrets": [{"name": "C", "value": "3"}], "stage": True},
    )
    before = {r["name"]: r["digest"] for r in api.get("/v1/apps/web/secrets", headers=h).json()}
    with control_plane.db.read() as session:
        old_wrapped = session.execute(select(AppKey.wrapped)).scalar_one()
    rotated = api.post("/v1/apps/web/secrets/rotate-key", headers=h)
    assert rotated.json() == {"key_version": 2, "reencrypted": 3}
    after = {r["name"]: r["digest"] for r in api.get("/v1/apps/web/secrets", headers=h).json()}
    assert set(after) == set(before) and all(after[n] != before[n] for n in before)
    with control_plane.db.read() as session:
        keys = session.execute(select(AppKey)).scalars().all()
        assert [(k.version, k.active) for k in keys] == [(2, True)]
        assert keys[0].wrapped != old_wrapped
        assert {r.key_version for r in session.execute(select(Secret)).scalars()} == {2}
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    machine = _one_off(api, h, tmp_path, "web")
    values = deliver(
        control_plane.db,
        control_plane.keyring,
        control_plane.audit,
        HOST_CTX,
        host_id=_host_id(control_plane, str(machine["id"])),
        machine_id=str(machine["id"]),
    )
    assert values == {"A": "one", "B": "two"}  # staged C waits for a deploy
