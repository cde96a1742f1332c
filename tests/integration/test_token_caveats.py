"""Token caveats tried as an attacker would: widened, ignored, or refused without a trace."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from fastapi import HTTPException
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hangar.api.app import create_agent_app, create_app
from hangar.api.guard import PUBLIC, GuardedRouter, iter_routes
from hangar.controlplane.state import ControlPlane
from hangar.crypto.macaroons import Macaroon
from hangar.errors import AuthError, PermissionDenied, audited
from hangar.store.tables import AuditEvent, Token
from tests.conftest import Installation, bearer, mint_token

PUBLIC_PATHS = {
    "/v1/healthz",
    "/v1/ca",
    "/v1/hosts/join",
    # Signing in: before anyone has credentials (tests/integration/test_signin.py).
    "/v1/auth/idps",
    "/v1/auth/cli/token",
    "/v1/auth/device",
    "/v1/auth/device/token",
    # Web pages: the browser's session cookie, not a bearer token (WebGuard).
    "/web/",
    "/web/static/{name}",
    "/web/signin",
    "/web/callback",
    "/web/device",
    "/web/signout",
}


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def _narrow(token: str, *caveats: str) -> str:
    return Macaroon.parse(token).attenuate(*caveats).serialize()


def events_for(cp: ControlPlane, request_id: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.request_id == request_id))
            .scalars()
            .all()
        )


def assert_refusal_audited(cp: ControlPlane, response: Any, what: str) -> None:
    rid = response.headers["x-request-id"]
    events = events_for(cp, rid)
    assert len(events) == 1, f"{what}: {response.status_code} left {len(events)} audit events"
    assert events[0].outcome in ("denied", "failure"), what


@dataclass
class World:
    admin: str
    acme_id: str
    tokens: dict[str, str]
    victim_token_id: str  # an admin's organization token, for revocation attempts


@pytest.fixture
def world(api: TestClient, installation: Installation, control_plane: ControlPlane) -> World:
    """acme with apps web and db; bob (member), vic (viewer); a token of each narrow kind."""
    h = installation.headers
    for name in ("web", "db"):
        assert api.post("/v1/apps", headers=h, json={"name": name}).status_code == 201
    for email, role in (("bob@example.com", "member"), ("vic@example.com", "viewer")):
        r = api.post("/v1/orgs/acme/members", headers=h, json={"email": email, "role": role})
        assert r.status_code == 201
    acme_id = api.get("/v1/orgs/acme", headers=h).json()["id"]
    admin = installation.token
    app_token = api.post(
        "/v1/tokens", headers=h, json={"kind": "app", "org": "acme", "app": "web"}
    ).json()["token"]
    readonly = api.post("/v1/tokens", headers=h, json={"kind": "readonly", "org": "acme"}).json()[
        "token"
    ]
    tokens = {
        "none": "",
        "garbage": "hm1_garbage",
        "expired (0 then future)": _narrow(admin, "expires = 0", f"expires = {_now() + 3600}"),
        "expired (future then past)": _narrow(admin, f"expires = {_now() + 3600}", "expires = 1"),
        "not yet valid": _narrow(admin, "not-before = 0", f"not-before = {_now() + 3600}"),
        "operator, write only": _narrow(admin, "actions = write,create,delete,control"),
        "operator, actions = write": _narrow(admin, "actions = write"),
        "operator, apps = web": _narrow(admin, "apps = web"),
        "operator, org = acme": _narrow(admin, f"org = {acme_id}"),
        "operator, read only": _narrow(admin, "actions = read"),
        "app token for web": app_token,
        "app token for web, read": _narrow(app_token, "actions = read"),
        "readonly org token": readonly,
        "member bob": mint_token(control_plane, "bob@example.com", kind="org", org="acme"),
        "viewer vic": mint_token(control_plane, "vic@example.com", kind="org", org="acme"),
    }
    victim = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()["id"]
    return World(admin=admin, acme_id=acme_id, tokens=tokens, victim_token_id=victim)


def _headers(token: str) -> dict[str, str]:
    return bearer(token) if token else {}


def test_a_past_expiry_is_never_undone(api: TestClient, world: World) -> None:
    past_stamps = [-1, 0, 1, _now() - 5]
    for past in past_stamps:
        for order in ((past, _now() + 3600), (_now() + 3600, past)):
            token = _narrow(world.admin, *(f"expires = {t}" for t in order))
            r = api.get("/v1/apps", headers=bearer(token))
            assert r.status_code == 401 and "expired" in r.json()["detail"], (order, r.text)
            # Nor can a child of it, whatever it adds.
            child = _narrow(token, f"expires = {_now() + 7200}", "not-before = 0")
            assert api.get("/v1/apps", headers=bearer(child)).status_code == 401


@pytest.mark.parametrize(
    "narrowing",
    [
        "apps = web",
        "actions = write",
        "actions = write,create,delete,control",
        "org = ACME",  # replaced by acme's id below
    ],
)
def test_a_narrowed_operator_token_cannot_read_the_system_chain(
    api: TestClient, world: World, control_plane: ControlPlane, narrowing: str
) -> None:
    narrowing = narrowing.replace("ACME", world.acme_id)
    token = _narrow(world.admin, narrowing)
    for path in ("/v1/audit/events", "/v1/audit/checkpoints", "/v1/audit/verify"):
        assert (
            api.get(path, headers=bearer(world.admin), params={"system": True}).status_code == 200
        )
        r = api.get(path, headers=bearer(token), params={"system": True})
        assert r.status_code == 403, (path, narrowing, r.text)
        assert_refusal_audited(control_plane, r, f"{path} with {narrowing}")
    # Nor any other installation-wide read; and a token bound to an org or an
    # app has no installation-wide power at all.
    powers = [("GET", "/v1/hosts"), ("GET", "/v1/edge")]
    if not narrowing.startswith("actions"):
        powers.append(("POST", "/v1/system/rotate-kek"))
    for method, path in powers:
        r = api.request(method, path, headers=bearer(token))
        assert r.status_code == 403, (method, path, narrowing, r.text)
        assert_refusal_audited(control_plane, r, f"{method} {path} with {narrowing}")


def _routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route in iter_routes(app.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods or ()):
                out.append((method, route.path))
    return out


def _fill(path: str, revoked: str | None = None) -> str:
    path = path.replace("{app}", "web").replace("{org}", "acme")
    path = path.replace("{token_id}", revoked or "x")
    return re.sub(r"\{[^}]+\}", "x", path)


# Bodies that pass validation, so the handler's own refusals are reached too.
BODIES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/v1/apps"): [{"name": "swept"}, {"name": "swept", "org": "acme"}],
    ("POST", "/v1/orgs"): [{"name": "swept-org"}],
    ("POST", "/v1/orgs/{org}/members"): [{"email": "swept@example.com"}],
    ("PATCH", "/v1/orgs/{org}/members/{email}"): [{"role": "viewer"}],
    ("POST", "/v1/tokens"): [
        {"kind": "user"},
        {"kind": "org", "org": "acme"},
        {"kind": "app", "org": "acme", "app": "db"},
        {"kind": "readonly", "org": "acme"},
    ],
}


def test_a_token_without_read_reads_nothing(
    api: TestClient, world: World, control_plane: ControlPlane
) -> None:
    """actions means exactly those actions: every GET refuses a token without read."""
    # The web pages answer to their own cookie, not a token (test_factors.py tries them).
    gets = [
        p
        for m, p in _routes(api.app)
        if m == "GET" and p not in PUBLIC_PATHS and not p.startswith("/web/")
    ]
    assert len(gets) >= 20
    for name in ("operator, write only", "operator, actions = write"):
        token = world.tokens[name]
        for path in gets:
            for params in ({}, {"system": True}, {"org": "acme"}):
                r = api.get(_fill(path), headers=bearer(token), params=params)
                assert r.status_code in (403, 404), (name, path, params, r.status_code, r.text)
                if r.status_code == 403:
                    assert_refusal_audited(control_plane, r, f"{name} GET {path}")
        assert api.get("/v1/apps", headers=bearer(token)).status_code == 403
        assert api.get("/v1/orgs", headers=bearer(token)).status_code == 403
        assert api.get("/v1/tokens", headers=bearer(token)).status_code == 403
        # What it was narrowed to still works.
    write_only = bearer(world.tokens["operator, write only"])
    r = api.post("/v1/apps", headers=write_only, json={"name": "made-by-write-only"})
    assert r.status_code == 201, r.text


def test_every_refusal_on_every_route_is_audited_once(
    api: TestClient, world: World, control_plane: ControlPlane
) -> None:
    """Each route, with each narrow or broken token: no 401 or 403 leaves no event."""
    routes = [(m, p) for m, p in _routes(api.app) if p not in PUBLIC_PATHS]
    refusals = 0
    for name, token in world.tokens.items():
        for method, path in routes:
            default: list[dict[str, Any] | None] = (
                [{}] if method in ("POST", "PUT", "PATCH") else [None]
            )
            for body in BODIES.get((method, path), default):
                url = _fill(path, world.victim_token_id)
                r = api.request(method, url, headers=_headers(token), json=body)
                assert r.status_code < 500, (name, method, path, r.text)
                if r.status_code in (401, 403):
                    refusals += 1
                    assert_refusal_audited(control_plane, r, f"{name}: {method} {path} {body}")
    assert refusals > 300


def test_refusals_a_handler_decides_are_audited(
    api: TestClient, installation: Installation, world: World, control_plane: ControlPlane
) -> None:
    h = installation.headers
    # A member revoking another member's token.
    admins = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()
    bob = bearer(world.tokens["member bob"])
    r = api.delete(f"/v1/tokens/{admins['id']}", headers=bob)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert_refusal_audited(control_plane, r, "member revoking another's token")
    with control_plane.db.read() as session:
        assert session.get(Token, admins["id"]).revoked_at is None  # type: ignore[union-attr]
    event = events_for(control_plane, r.headers["x-request-id"])[0]
    assert event.actor == "bob@example.com" and event.chain == world.acme_id
    # An app token used on another app, and to mint a token for another app.
    web = bearer(world.tokens["app token for web"])
    for method, path, body in (
        ("GET", "/v1/apps/db", None),
        ("DELETE", "/v1/apps/db", None),
        ("GET", "/v1/apps/db/secrets", None),
        ("POST", "/v1/tokens", {"kind": "app", "org": "acme", "app": "db"}),
        ("POST", "/v1/tokens", {"kind": "org", "org": "acme"}),
        ("GET", "/v1/tokens", None),
        ("GET", "/v1/orgs/acme/members", None),
    ):
        r = api.request(method, path, headers=web, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert_refusal_audited(control_plane, r, f"app token: {method} {path}")
    # An organization token asking for a user token.
    org_token = bearer(admins["token"])
    r = api.post("/v1/tokens", headers=org_token, json={"kind": "user"})
    assert r.status_code == 403
    assert_refusal_audited(control_plane, r, "org token minting a user token")


def test_the_agents_api_audits_refusals_too(
    control_plane: ControlPlane, installation: Installation
) -> None:
    """No client certificate, or a user's bearer token instead: 401, and on the trail."""
    with TestClient(create_agent_app(control_plane), raise_server_exceptions=False) as agent:
        routes = _routes(agent.app)
        assert routes
        for headers in ({}, installation.headers):
            for method, path in routes:
                kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PUT") else {}
                r = agent.request(method, _fill(path), headers=headers, **kwargs)
                assert r.status_code == 401, (method, path, r.text)
                assert_refusal_audited(control_plane, r, f"agent {method} {path}")


def test_the_backstop_records_no_refusal_twice(
    api: TestClient, world: World, control_plane: ControlPlane
) -> None:
    """A refusal the guard recorded is not recorded again by the error handler."""
    with control_plane.db.read() as session:
        before = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    r = api.get("/v1/apps/db", headers=bearer(world.tokens["app token for web"]))
    assert r.status_code == 403
    with control_plane.db.read() as session:
        after = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    assert after == before + 1


def test_the_error_handler_audits_what_nothing_else_did(control_plane: ControlPlane) -> None:
    """A refusal raised on a path no guard or service audits still reaches the trail."""
    app = create_app(control_plane)
    router = GuardedRouter()

    @router.get("/v1/test-refusal/{kind}")
    def refuse(kind: str, _: Annotated[None, PUBLIC]) -> None:
        if kind == "auth":
            raise AuthError("no")
        if kind == "denied":
            raise PermissionDenied("no")
        if kind == "http":
            raise HTTPException(status_code=403, detail="no")
        raise audited(PermissionDenied("already recorded elsewhere"))

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        for kind, status in (("auth", 401), ("denied", 403), ("http", 403)):
            r = client.get(f"/v1/test-refusal/{kind}")
            assert r.status_code == status
            assert_refusal_audited(control_plane, r, kind)
            event = events_for(control_plane, r.headers["x-request-id"])[0]
            assert event.actor == "anonymous" and event.chain == "system"
            assert event.target == f"GET /v1/test-refusal/{kind}"
        r = client.get("/v1/test-refusal/marked")
        assert r.status_code == 403
        assert events_for(control_plane, r.headers["x-request-id"]) == []


def test_a_refusal_by_an_org_tokens_caveats_lands_on_that_orgs_chain(
    api: TestClient, world: World, control_plane: ControlPlane
) -> None:
    """The organization's admins see what its tokens were refused, even before a target."""
    for name, method, path, body in (
        ("readonly org token", "POST", "/v1/apps", {"name": "nope"}),
        ("app token for web, read", "GET", "/v1/tokens", None),
        ("app token for web, read", "POST", "/v1/apps", {"name": "nope"}),
    ):
        r = api.request(method, path, headers=bearer(world.tokens[name]), json=body)
        assert r.status_code == 403, (name, path, r.text)
        event = events_for(control_plane, r.headers["x-request-id"])[0]
        assert event.chain == world.acme_id, (name, path)
        assert event.actor == "admin@example.com"
