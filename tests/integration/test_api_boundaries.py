"""Tokens, organizations and bad input, tried as an attacker would (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hangar.controlplane.state import ControlPlane
from hangar.crypto.macaroons import Macaroon
from hangar.store.tables import App, AuditEvent
from tests.conftest import Installation, bearer, mint_token


def count(cp: ControlPlane, table: Any) -> int:
    with cp.db.read() as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())


def last_event(cp: ControlPlane, chain: str | None = None) -> AuditEvent:
    with cp.db.read() as session:
        query = select(AuditEvent).order_by(AuditEvent.time.desc(), AuditEvent.seq.desc())
        if chain:
            query = query.where(AuditEvent.chain == chain)
        return session.execute(query.limit(1)).scalar_one()


@pytest.fixture
def two_orgs(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> dict[str, str]:
    """acme (admin's) with app clinic-api; globex, whose admin is eve, with app secret-app."""
    h = installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "clinic-api"}).status_code == 201
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    assert (
        api.post(
            "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
        ).status_code
        == 201
    )
    assert (
        api.post("/v1/apps", headers=h, json={"name": "secret-app", "org": "globex"}).status_code
        == 201
    )
    assert api.delete("/v1/orgs/globex/members/admin@example.com", headers=h).status_code == 204
    eve = mint_token(control_plane, "eve@example.com", kind="org", org="globex")
    return {"eve": eve}


def test_no_token_wrong_scheme_garbage_are_401_and_audited(
    api: TestClient, control_plane: ControlPlane
) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer hm1_garbage"},
    ):
        before = count(control_plane, AuditEvent)
        r = api.get("/v1/apps", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == 401 and body["request_id"] == r.headers["x-request-id"]
        assert count(control_plane, AuditEvent) == before + 1
        event = last_event(control_plane, "system")
        assert event.outcome == "failure" and event.action == "auth.authenticate"
        assert event.request_id == r.headers["x-request-id"]


def test_expired_token_is_refused(api: TestClient, control_plane: ControlPlane) -> None:
    token = mint_token(control_plane, "admin@example.com", ttl=dt.timedelta(seconds=-1))
    r = api.get("/v1/apps", headers=bearer(token))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_offline_expiry_caveat_is_enforced(api: TestClient, installation: Installation) -> None:
    past = int(dt.datetime.now(dt.UTC).timestamp()) - 5
    token = Macaroon.parse(installation.token).attenuate(f"expires = {past}").serialize()
    r = api.get("/v1/apps", headers=bearer(token))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_forged_signature_is_refused(api: TestClient, installation: Installation) -> None:
    m = Macaroon.parse(installation.token)
    forged = Macaroon(m.identifier, m.caveats, bytes(32)).serialize()
    r = api.get("/v1/apps", headers=bearer(forged))
    assert r.status_code == 401 and "signature" in r.json()["detail"]


def test_stripping_a_caveat_is_refused(api: TestClient, installation: Installation) -> None:
    narrowed = Macaroon.parse(installation.token).attenuate("actions = read")
    stripped = Macaroon(narrowed.identifier, (), narrowed.signature).serialize()
    assert api.post("/v1/apps", headers=bearer(stripped), json={"name": "x"}).status_code == 401


def test_unknown_caveat_is_refused(api: TestClient, installation: Installation) -> None:
    token = Macaroon.parse(installation.token).attenuate("ip = 10.0.0.1").serialize()
    r = api.get("/v1/apps", headers=bearer(token))
    assert r.status_code == 401 and "does not know" in r.json()["detail"]


def test_attenuated_token_cannot_go_beyond_its_scope(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps", headers=h, json={"name": "db"})
    narrow = Macaroon.parse(installation.token).attenuate("apps = web", "actions = read")
    nh = bearer(narrow.serialize())
    assert api.get("/v1/apps/web", headers=nh).status_code == 200
    assert [a["name"] for a in api.get("/v1/apps", headers=nh).json()["items"]] == ["web"]
    assert api.get("/v1/apps/db", headers=nh).status_code == 403
    apps_before = count(control_plane, App)
    assert api.delete("/v1/apps/web", headers=nh).status_code == 403
    assert api.post("/v1/apps", headers=nh, json={"name": "new"}).status_code == 403
    assert (
        api.post("/v1/tokens", headers=nh, json={"kind": "org", "org": "acme"}).status_code == 403
    )
    assert count(control_plane, App) == apps_before
    assert last_event(control_plane).outcome == "denied"


def test_revocation_is_immediate_and_covers_attenuated_children(
    api: TestClient, installation: Installation
) -> None:
    h = installation.headers
    created = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()
    child = Macaroon.parse(created["token"]).attenuate("actions = read").serialize()
    assert api.get("/v1/apps", headers=bearer(created["token"])).status_code == 200
    assert api.get("/v1/apps", headers=bearer(child)).status_code == 200
    assert api.delete(f"/v1/tokens/{created['id']}", headers=h).status_code == 204
    for token in (created["token"], child):
        r = api.get("/v1/apps", headers=bearer(token))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_another_orgs_objects_answer_404_and_are_audited_there(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    two_orgs: dict[str, str],
) -> None:
    eve = bearer(two_orgs["eve"])
    for method, path in [
        ("GET", "/v1/apps/clinic-api"),
        ("DELETE", "/v1/apps/clinic-api"),
        ("GET", "/v1/orgs/acme"),
        ("GET", "/v1/orgs/acme/members"),
        ("POST", "/v1/orgs/acme/members"),
        ("GET", "/v1/tokens?org=acme"),
    ]:
        kwargs: dict[str, Any] = {"json": {"email": "eve@example.com"}} if method == "POST" else {}
        r = api.request(method, path, headers=eve, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
        missing = api.request(
            method,
            path.replace("acme", "nope").replace("clinic-api", "nope"),
            headers=eve,
            **kwargs,
        )
        assert missing.status_code == 404
        # Same words whether the object is someone else's or does not exist.
        assert r.json()["detail"].replace("acme", "X").replace("clinic-api", "X") == missing.json()[
            "detail"
        ].replace("nope", "X")
    acme_id = api.get("/v1/orgs/acme", headers=installation.headers).json()["id"]
    event = last_event(control_plane, acme_id)
    assert event.outcome == "denied" and event.actor == "eve@example.com"
    assert api.post("/v1/apps", headers=eve, json={"name": "x", "org": "acme"}).status_code == 404
    assert api.get("/v1/apps", headers=eve).json()["items"][0]["name"] == "secret-app"
    assert len(api.get("/v1/apps", headers=eve).json()["items"]) == 1


def test_viewer_can_read_but_not_write(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "vic@example.com", "role": "viewer"}
    )
    vic = bearer(mint_token(control_plane, "vic@example.com", kind="org", org="acme"))
    assert api.get("/v1/apps", headers=vic).status_code == 200
    r = api.post("/v1/apps", headers=vic, json={"name": "x"})
    assert r.status_code == 403 and "member role" in r.json()["detail"]
    assert api.get("/v1/audit/events?org=acme", headers=vic).status_code == 403


def test_member_removal_cuts_access(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "bob@example.com", "role": "member"}
    )
    bob = bearer(mint_token(control_plane, "bob@example.com", kind="org", org="acme"))
    assert api.post("/v1/apps", headers=bob, json={"name": "bobs"}).status_code == 201
    assert api.delete("/v1/orgs/acme/members/bob@example.com", headers=h).status_code == 204
    # Removal revokes the member's tokens for the organization at once (offboarding).
    assert api.get("/v1/apps/bobs", headers=bob).status_code == 401


def test_last_admin_cannot_be_removed_or_demoted(
    api: TestClient, installation: Installation
) -> None:
    h = installation.headers
    assert api.delete("/v1/orgs/acme/members/admin@example.com", headers=h).status_code == 409
    r = api.patch("/v1/orgs/acme/members/admin@example.com", headers=h, json={"role": "viewer"})
    assert r.status_code == 409 and "last admin" in r.json()["detail"]


def test_token_cannot_outlive_or_outgrow_its_maker(
    api: TestClient, installation: Installation
) -> None:
    h = installation.headers
    short = (
        Macaroon.parse(installation.token)
        .attenuate(f"expires = {int(dt.datetime.now(dt.UTC).timestamp()) + 600}")
        .serialize()
    )
    made = api.post(
        "/v1/tokens",
        headers=bearer(short),
        json={"kind": "org", "org": "acme", "expiry_seconds": 86400 * 30},
    ).json()
    expires = dt.datetime.fromisoformat(made["expires_at"])
    assert expires <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=601)
    org_token = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()
    r = api.post("/v1/tokens", headers=bearer(org_token["token"]), json={"kind": "user"})
    assert r.status_code == 403


def test_app_token_is_bound_to_its_app(api: TestClient, installation: Installation) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps", headers=h, json={"name": "db"})
    t = api.post("/v1/tokens", headers=h, json={"kind": "app", "org": "acme", "app": "web"}).json()
    assert "apps = web" in t["caveats"]
    th = bearer(t["token"])
    assert api.get("/v1/apps/web", headers=th).status_code == 200
    assert api.get("/v1/apps/db", headers=th).status_code == 403
    missing = api.post("/v1/tokens", headers=h, json={"kind": "app", "org": "acme", "app": "nope"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"name": ', 422),
        ('["name"]', 422),
        ('{"name": 5}', 422),
        ('{"name": "Has_Upper"}', 422),
        ('{"name": "-leading"}', 422),
        ('{"name": "' + "a" * 64 + '"}', 422),
        ('{"name": "ok", "extra": 1}', 422),
        ('{"name": "ok", "org": "nope"}', 404),
    ],
)
def test_bad_app_bodies_get_problems_and_change_nothing(
    api: TestClient, installation: Installation, control_plane: ControlPlane, body: str, status: int
) -> None:
    before = count(control_plane, App)
    r = api.post(
        "/v1/apps",
        headers={**installation.headers, "content-type": "application/json"},
        content=body,
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"]
    assert count(control_plane, App) == before


def test_oversized_body_is_refused(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    before = count(control_plane, App)
    big = '{"name": "x", "pad": "' + "a" * (2 << 20) + '"}'
    r = api.post(
        "/v1/apps",
        headers={**installation.headers, "content-type": "application/json"},
        content=big,
    )
    assert r.status_code == 413
    assert count(control_plane, App) == before


def test_duplicate_app_name_conflicts_across_orgs(
    api: TestClient, installation: Installation, two_orgs: dict[str, str]
) -> None:
    r = api.post("/v1/apps", headers=bearer(two_orgs["eve"]), json={"name": "clinic-api"})
    assert r.status_code == 409 and "taken" in r.json()["detail"]


def walk(api: TestClient, path: str, headers: dict[str, str], **params: Any) -> list[Any]:
    seen: list[Any] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"limit": 3, **params}
        if cursor:
            query["cursor"] = cursor
        response = api.get(path, headers=headers, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def test_pagination_walks_every_item_once(api: TestClient, installation: Installation) -> None:
    h = installation.headers
    names = {f"app-{i:02d}" for i in range(7)}
    for name in names:
        assert api.post("/v1/apps", headers=h, json={"name": name}).status_code == 201
    apps = [a["name"] for a in walk(api, "/v1/apps", h)]
    assert sorted(apps) == sorted(names) and len(apps) == len(names)

    emails = {f"m{i}@example.com" for i in range(5)} | {"admin@example.com"}
    for email in emails - {"admin@example.com"}:
        api.post("/v1/orgs/acme/members", headers=h, json={"email": email, "role": "viewer"})
    members = [m["email"] for m in walk(api, "/v1/orgs/acme/members", h)]
    assert sorted(members) == sorted(emails) and len(members) == len(emails)

    made = {
        api.post("/v1/tokens", headers=h, json={"kind": "readonly", "org": "acme"}).json()["id"]
        for _ in range(7)
    }
    tokens = [t["id"] for t in walk(api, "/v1/tokens", h, org="acme")]
    assert sorted(tokens) == sorted(made) and len(tokens) == len(made)

    for bad in ("!!", "eyJhZnRlciI6IHt9fQ"):  # not base64; {"after": {}}
        assert api.get("/v1/apps", headers=h, params={"cursor": bad}).status_code == 422
        assert api.get("/v1/tokens", headers=h, params={"cursor": bad}).status_code == 422


def test_unknown_route_and_method_are_problems(api: TestClient, installation: Installation) -> None:
    r = api.get("/v1/nothing", headers=installation.headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert api.put("/v1/apps", headers=installation.headers).status_code == 405
