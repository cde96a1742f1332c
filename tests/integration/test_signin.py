"""Signing in through a real OpenID provider (oidc-provider-mock, on loopback).

The browser is played by an httpx client following the provider's form and
Hangar's redirects; the attacks are the ones a person in the middle, another
site, or a former member would try.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from oidc_provider_mock import run_server_in_thread
from sqlalchemy import select

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import AuditEvent, Org, WireguardPeer
from tests.conftest import Installation, bearer, make_installation

PUBLIC = "https://testserver"


@dataclass
class World:
    cp: ControlPlane
    api: TestClient
    admin: dict[str, str]
    issuer: str
    inst: Installation

    def set_user(self, sub: str, **claims: object) -> None:
        httpx.put(f"{self.issuer}/users/{sub}", json=claims).raise_for_status()

    def idp_login(self, authorize_url: str, sub: str) -> str:
        """Play the person at the provider: returns where it sends the browser back."""
        parts = urlsplit(authorize_url)
        response = httpx.post(
            f"{self.issuer}{parts.path}?{parts.query}", data={"sub": sub}, follow_redirects=False
        )
        assert response.status_code in (302, 303), response.text[:300]
        return response.headers["location"]

    def sign_in(self, sub: str, client: TestClient | None = None, **params: str) -> httpx.Response:
        """A whole browser sign-in; the response of Hangar's callback."""
        client = client or self.api
        start = client.get("/web/signin", params={"idp": "corp", **params}, follow_redirects=False)
        assert start.status_code == 302, start.text
        back = self.idp_login(start.headers["location"], sub)
        assert back.startswith(PUBLIC + "/web/callback")
        return through_steps(client, client.get(back.removeprefix(PUBLIC), follow_redirects=False))


def through_steps(client: TestClient, done: httpx.Response) -> httpx.Response:
    """Every sign-in passes the second-factor step's page; with no factor
    enrolled it sends the browser straight on (as the callback would)."""
    if done.headers.get("location") == "/web/signin/second-factor":
        return client.get("/web/signin/second-factor", follow_redirects=False)
    return done


@pytest.fixture
def provider() -> Iterator[str]:
    with run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
def world(tmp_path: Path, provider: str, database_url: str) -> Iterator[World]:
    inst: Installation = make_installation(tmp_path / "data", database_url, public_url=PUBLIC)
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp), base_url=PUBLIC, raise_server_exceptions=False) as api:
        r = api.post(
            "/v1/idps",
            headers=inst.headers,
            json={"name": "corp", "issuer": provider, "client_id": "hangar", "client_secret": "s3"},
        )
        assert r.status_code == 201, r.text
        yield World(cp=cp, api=api, admin=inst.headers, issuer=provider, inst=inst)
    cp.close()


def signed_in_to(response: httpx.Response) -> str:
    """Where a successful browser sign-in's page goes on to (a same-site refresh)."""
    assert response.status_code == 200, response.text[:300]
    assert "__Host-hangar-session=" in response.headers.get("set-cookie", "")
    match = re.search(r'<meta http-equiv=refresh content="0;url=([^"]*)">', response.text)
    assert match is not None, response.text[:300]
    return match.group(1)


def cli_link(response: httpx.Response) -> str:
    """The link a CLI sign-in's last page asks the person to follow (to the loopback)."""
    assert response.status_code == 200, response.text[:300]
    assert "__Host-hangar-session=" not in response.headers.get("set-cookie", "")
    match = re.search(r'<a href="(http://[^"]*)">Sign in the command line</a>', response.text)
    assert match is not None, response.text[:300]
    return html.unescape(match.group(1))


def _events(cp: ControlPlane, action: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars()
        )


def test_a_member_signs_in_in_the_browser_and_the_session_works(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", email_verified=True)
    done = world.sign_in("bob")
    assert signed_in_to(done) == "/web/"
    cookie = done.cookies.get("__Host-hangar-session") or world.api.cookies.get(
        "__Host-hangar-session"
    )
    assert cookie
    set_cookie = done.headers.get_list("set-cookie")
    session_cookie = next(c for c in set_cookie if c.startswith("__Host-hangar-session="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie
    assert "SameSite=strict" in session_cookie or "SameSite=Strict" in session_cookie
    home = world.api.get("/web/")
    assert home.status_code == 200 and "bob@example.com" in home.text
    assert "default-src 'none'" in home.headers["content-security-policy"]
    me = world.api.get("/v1/whoami", headers=bearer(cookie))
    assert me.status_code == 200 and me.json()["email"] == "bob@example.com"
    signins = _events(world.cp, "auth.signin")
    assert any(e.actor == "bob@example.com" and e.outcome == "success" for e in signins)


def test_a_stranger_is_refused_and_the_refusal_is_audited(world: World) -> None:
    world.set_user("eve", email="eve@evil.example", email_verified=True)
    done = world.sign_in("eve")
    assert done.status_code == 401
    assert "__Host-hangar-session" not in done.headers.get("set-cookie", "")
    failures = [e for e in _events(world.cp, "auth.signin") if e.outcome == "failure"]
    assert failures and "eve@evil.example" in failures[-1].target


def test_a_replayed_callback_is_refused(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.get("/web/signin", params={"idp": "corp"}, follow_redirects=False)
    back = world.idp_login(start.headers["location"], "bob").removeprefix(PUBLIC)
    pending = world.api.cookies.get("__Host-hangar-signin")
    first = through_steps(world.api, world.api.get(back, follow_redirects=False))
    assert signed_in_to(first) == "/web/"
    world.api.cookies.set("__Host-hangar-signin", pending or "")
    again = world.api.get(back, follow_redirects=False)
    assert again.status_code == 401


def test_a_callback_in_another_browser_is_refused(world: World) -> None:
    """Login CSRF / session fixation: the state is bound to the browser that started."""
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.get("/web/signin", params={"idp": "corp"}, follow_redirects=False)
    back = world.idp_login(start.headers["location"], "bob").removeprefix(PUBLIC)
    with TestClient(world.api.app, base_url=PUBLIC) as victim:
        assert victim.get(back, follow_redirects=False).status_code == 401


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_cli_loopback_sign_in_needs_the_pkce_verifier(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    done = world.sign_in(
        "bob",
        cli_redirect="http://127.0.0.1:53123/callback",
        cli_challenge=challenge,
        cli_state=state,
    )
    target = urlsplit(cli_link(done))
    assert (target.scheme, target.netloc, target.path) == ("http", "127.0.0.1:53123", "/callback")
    query = parse_qs(target.query)
    assert query["state"] == [state]
    code = query["code"][0]
    wrong = world.api.post("/v1/auth/cli/token", json={"code": code, "code_verifier": _pkce()[0]})
    assert wrong.status_code == 401
    # The wrong verifier spent the code: the right one no longer helps.
    right = world.api.post("/v1/auth/cli/token", json={"code": code, "code_verifier": verifier})
    assert right.status_code == 401


def test_cli_loopback_sign_in_issues_a_session(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    verifier, challenge = _pkce()
    done = world.sign_in(
        "bob",
        cli_redirect="http://127.0.0.1:53123/callback",
        cli_challenge=challenge,
        cli_state=secrets.token_urlsafe(16),
    )
    code = parse_qs(urlsplit(cli_link(done)).query)["code"][0]
    r = world.api.post("/v1/auth/cli/token", json={"code": code, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert world.api.get("/v1/orgs", headers=bearer(token)).status_code == 200
    again = world.api.post("/v1/auth/cli/token", json={"code": code, "code_verifier": verifier})
    assert again.status_code == 401
    assert world.api.delete("/v1/auth/session", headers=bearer(token)).status_code == 204
    assert world.api.get("/v1/orgs", headers=bearer(token)).status_code == 401


@pytest.mark.parametrize(
    "redirect",
    [
        "http://evil.example:53123/callback",
        "https://127.0.0.1:53123/callback",
        "http://127.0.0.1.evil.example:53123/callback",
        "http://127.0.0.1:53123/elsewhere",
        "http://127.0.0.1:53123/callback@evil.example",
    ],
)
def test_the_cli_redirect_must_be_loopback(world: World, redirect: str) -> None:
    _, challenge = _pkce()
    r = world.api.get(
        "/web/signin",
        params={
            "idp": "corp",
            "cli_redirect": redirect,
            "cli_challenge": challenge,
            "cli_state": secrets.token_urlsafe(16),
        },
        follow_redirects=False,
    )
    assert r.status_code == 422 and "location" not in r.headers


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/web//evil"])
def test_no_open_redirect_after_sign_in(world: World, target: str) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    done = world.sign_in("bob", next=target)
    assert signed_in_to(done) == "/web/"


def test_group_roles_make_members_just_in_time(world: World) -> None:
    r = world.api.patch(
        "/v1/orgs/acme/policy",
        headers=world.admin,
        json={
            "set": {
                "sso_idp": "corp",
                "group_roles": {"eng": "member"},
                "email_domains": ["example.com"],
            }
        },
    )
    assert r.status_code == 200, r.text
    world.set_user("carol", email="carol@example.com", groups=["eng"])
    assert signed_in_to(world.sign_in("carol")) == "/web/"
    members = world.api.get("/v1/orgs/acme/members", headers=world.admin).json()["items"]
    assert {"email": "carol@example.com", "role": "member"}.items() <= next(
        m for m in members if m["email"] == "carol@example.com"
    ).items()
    world.set_user("dave", email="dave@other.example", groups=["eng"])
    assert world.sign_in("dave").status_code == 401
    assert any(e.action == "org.set_policy" for e in _events(world.cp, "org.set_policy"))


def test_removing_a_member_ends_their_sessions_tokens_and_devices(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session")
    assert cookie
    tok = world.api.post(
        "/v1/tokens", headers=bearer(cookie), json={"kind": "org", "org": "acme"}
    ).json()["token"]
    assert world.api.get("/v1/orgs/acme", headers=bearer(tok)).status_code == 200
    _add_device(world.cp, "bob-laptop", "bob@example.com")
    _add_device(world.cp, "admin-laptop", "admin@example.com")
    r = world.api.delete("/v1/orgs/acme/members/bob@example.com", headers=world.admin)
    assert r.status_code == 204, r.text
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 401
    assert world.api.get("/v1/whoami", headers=bearer(tok)).status_code == 401
    with world.cp.db.read() as session:
        left = session.execute(select(WireguardPeer.name)).scalars().all()
    assert left == ["admin-laptop"]
    removed = _events(world.cp, "member.remove")[-1]
    assert '"bob-laptop"' in removed.detail and "tokens_revoked" in removed.detail


def _add_device(cp: ControlPlane, name: str, email: str) -> None:
    """A person's WireGuard device, as `hangar wireguard add` records it."""
    with cp.db.write() as session:
        org_id = session.execute(select(Org.id).where(Org.name == "acme")).scalar_one()
        session.add(
            WireguardPeer(
                id=f"wg_{name}"[:32],
                org_id=org_id,
                name=name,
                network="default",
                public_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                address=f"fdaa:0:0:0:0:0:0:{secrets.randbelow(60000) + 1:x}",
                gateway_host_id="host_local",
                created_by=email,
                created_at=dt.datetime.now(dt.UTC),
            )
        )


def test_a_disabled_user_cannot_sign_in_or_call(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session")
    r = world.api.post("/v1/users/bob@example.com/disable", headers=world.admin)
    assert r.status_code == 200, r.text
    assert world.api.get("/v1/whoami", headers=bearer(cookie or "")).status_code == 401
    world.api.cookies.clear()
    assert world.sign_in("bob").status_code == 401


def test_device_sign_in_is_approved_by_a_signed_in_person(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    poll = {"device_code": start["device_code"]}
    assert world.api.post("/v1/auth/device/token", json=poll).json()["error"] == (
        "authorization_pending"
    )
    world.sign_in("bob")
    form = world.api.get("/web/device", params={"code": start["user_code"]})
    assert form.status_code == 200 and start["user_code"] in form.text
    # No CSRF token: refused, nothing approved.
    bad = world.api.post("/web/device", data={"code": start["user_code"], "decision": "approve"})
    assert bad.status_code == 403
    csrf = world.api.cookies.get("__Host-hangar-csrf")
    ok = world.api.post(
        "/web/device",
        data={"code": start["user_code"], "decision": "approve", "csrf": csrf or ""},
    )
    assert ok.status_code == 200, ok.text
    got = world.api.post("/v1/auth/device/token", json=poll)
    assert got.status_code == 200, got.text
    assert world.api.get("/v1/whoami", headers=bearer(got.json()["token"])).json()["email"] == (
        "bob@example.com"
    )
    assert world.api.post("/v1/auth/device/token", json=poll).json()["error"] == "expired_token"


def test_signout_form_needs_csrf(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session") or ""
    assert world.api.get("/web/").status_code == 200  # the page that holds the form
    assert world.api.post("/web/signout", data={"csrf": "forged"}).status_code == 403
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 200
    csrf = world.api.cookies.get("__Host-hangar-csrf") or ""
    cross = world.api.post(
        "/web/signout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    done = world.api.post("/web/signout", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 401


def test_failed_sign_ins_are_rate_limited(world: World) -> None:
    for _ in range(5):
        assert world.api.get("/web/callback", params={"state": "x", "code": "y"}).status_code == 401
    limited = world.api.get("/web/callback", params={"state": "x", "code": "y"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_the_bootstrap_token_is_break_glass(world: World, caplog: pytest.LogCaptureFixture) -> None:
    assert world.api.get("/v1/whoami", headers=world.admin).status_code == 200
    assert _events(world.cp, "auth.break_glass") == []  # an everyday token is not
    for n in (1, 2):
        r = world.api.get("/v1/whoami", headers=world.inst.break_glass_headers)
        assert r.status_code == 200
        events = _events(world.cp, "auth.break_glass")
        assert len(events) == n and events[-1].token_id == world.inst.init.token_id
    assert "break-glass" in caplog.text


def test_a_user_the_idp_disables_is_offboarded_at_the_next_check(world: World) -> None:
    from hangar.controlplane.identitycheck import check_identities

    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session") or ""
    tok = world.api.post(
        "/v1/tokens", headers=bearer(cookie), json={"kind": "org", "org": "acme"}
    ).json()["token"]
    # The provider still vouches: nothing happens.
    assert check_identities(world.cp) == 0
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 200
    # The provider disables bob (its refresh tokens for him stop working).
    httpx.post(f"{world.issuer}/users/bob/revoke-tokens").raise_for_status()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=world.cp.settings.idp_check_seconds + 1)
    assert check_identities(world.cp, later) == 1
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 401
    assert world.api.get("/v1/whoami", headers=bearer(tok)).status_code == 401
    assert [e.target for e in _events(world.cp, "user.idp_disabled")] == ["bob@example.com"]


def test_sessions_end_when_expired_or_idle(world: World) -> None:
    from hangar.store.tables import UserSession

    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session") or ""
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 200
    with world.cp.db.write() as session:
        row = session.execute(select(UserSession)).scalars().one()
        row.last_seen_at -= dt.timedelta(seconds=row.idle_timeout_s + 5)
    idle = world.api.get("/v1/whoami", headers=bearer(cookie))
    assert idle.status_code == 401 and "automatic logoff" in idle.json()["detail"]
    with world.cp.db.write() as session:
        row = session.execute(select(UserSession)).scalars().one()
        row.last_seen_at = dt.datetime.now(dt.UTC)
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    expired = world.api.get("/v1/whoami", headers=bearer(cookie))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    failures = [e for e in _events(world.cp, "auth.authenticate") if e.outcome == "failure"]
    assert len(failures) >= 2


def test_an_org_requiring_another_idp_is_out_of_reach(world: World) -> None:
    r = world.api.post(
        "/v1/idps",
        headers=world.admin,
        json={"name": "other", "issuer": world.issuer, "client_id": "x"},
    )
    assert r.status_code == 201
    world.api.post("/v1/orgs", headers=world.admin, json={"name": "beta"})
    for org in ("acme", "beta"):
        world.api.post(
            f"/v1/orgs/{org}/members", headers=world.admin, json={"email": "bob@example.com"}
        )
    assert (
        world.api.patch(
            "/v1/orgs/beta/policy", headers=world.admin, json={"set": {"sso_idp": "other"}}
        ).status_code
        == 200
    )
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session") or ""
    assert world.api.get("/v1/orgs/acme", headers=bearer(cookie)).status_code == 200
    assert world.api.get("/v1/orgs/beta", headers=bearer(cookie)).status_code == 404


def test_a_token_cannot_pose_as_a_session_nor_a_session_as_another(world: World) -> None:
    from hangar.crypto.macaroons import Macaroon

    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    session_token = world.api.cookies.get("__Host-hangar-session") or ""
    sid = world.api.get("/v1/auth/sessions", headers=bearer(session_token)).json()[0]["id"]
    api_token = world.api.post(
        "/v1/tokens", headers=bearer(session_token), json={"kind": "user"}
    ).json()["token"]
    posing = Macaroon.parse(api_token).attenuate(f"session = {sid}").serialize()
    assert world.api.get("/v1/whoami", headers=bearer(posing)).status_code == 401
    other = Macaroon.parse(session_token).attenuate("session = ses_0000000000000000").serialize()
    assert world.api.get("/v1/whoami", headers=bearer(other)).status_code == 401
    # An API token in the session cookie does not sign a browser in.
    world.api.cookies.set("__Host-hangar-session", api_token)
    page = world.api.get("/web/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/web/signin"


def test_session_tokens_are_not_listed_as_api_tokens(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    session_token = world.api.cookies.get("__Host-hangar-session") or ""
    listed = world.api.get("/v1/tokens", headers=bearer(session_token)).json()["items"]
    assert all(t["kind"] != "session" for t in listed)


def test_use_keeps_a_session_from_idling_out(world: World) -> None:
    from hangar.store.tables import UserSession

    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    cookie = world.api.cookies.get("__Host-hangar-session") or ""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    with world.cp.db.write() as session:
        session.execute(select(UserSession)).scalars().one().last_seen_at = before
    assert world.api.get("/v1/whoami", headers=bearer(cookie)).status_code == 200
    with world.cp.db.read() as session:
        seen = session.execute(select(UserSession)).scalars().one().last_seen_at
    assert seen > before + dt.timedelta(minutes=4)


def test_a_planted_session_cookie_is_replaced_at_sign_in(world: World) -> None:
    """Session fixation: whatever session cookie a browser held, signing in issues a new one."""
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "eve@example.com"})
    world.set_user("eve", email="eve@example.com")
    world.set_user("bob", email="bob@example.com")
    world.sign_in("eve")
    planted = world.api.cookies.get("__Host-hangar-session") or ""
    world.api.cookies.clear()
    world.api.cookies.set("__Host-hangar-session", planted)
    done = world.sign_in("bob")
    assert signed_in_to(done) == "/web/"
    issued = done.cookies.get("__Host-hangar-session")
    assert issued and issued != planted
    me = world.api.get("/v1/whoami", headers=bearer(issued)).json()
    assert me["email"] == "bob@example.com"
    # The attacker's own session is still only the attacker's.
    assert world.api.get("/v1/whoami", headers=bearer(planted)).json()["email"] == "eve@example.com"


def test_failed_sign_ins_are_limited_per_person_too(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.set_user("eve", email="eve@elsewhere.example")
    for _ in range(5):
        assert world.sign_in("eve").status_code == 401
    # As if eve came from a fresh address: the person's own count still holds her back.
    world.cp.signin_limiter.succeeded(["addr:testclient"])
    assert world.sign_in("eve").status_code == 429
    # Others from that address are not held back by eve's failures.
    world.cp.signin_limiter.succeeded(["addr:testclient"])
    assert signed_in_to(world.sign_in("bob")) == "/web/"


def test_a_registered_step_runs_before_the_session_is_issued(world: World) -> None:
    """The pipeline's seam: a step (as a second factor registers one) holds the session back."""
    from hangar.auth import signin
    from hangar.controlplane import signins
    from hangar.errors import AuthError

    @dataclass(frozen=True)
    class Extra:
        name: str = "extra"
        page: str = "/web/extra-step"

        def applies(self, ctx: signin.SigninContext) -> bool:
            return ctx.email == "bob@example.com"

    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", amr=["pwd"])
    signin.register_step(Extra())
    try:
        held = world.sign_in("bob")
        assert held.status_code == 303 and held.headers["location"] == "/web/extra-step"
        assert not world.api.cookies.get("__Host-hangar-session")
        cookie = world.api.cookies.get("__Host-hangar-signin")
        with pytest.raises(AuthError):
            signins.step_done(
                world.cp, cookie, "other", signin.StepResult(), client_addr=None, request_id=None
            )
        outcome = signins.step_done(
            world.cp,
            cookie,
            "extra",
            signin.StepResult(amr=["hwk"], second_factor=True),
            client_addr=None,
            request_id=None,
        )
        assert outcome.session_token is not None
        me = world.api.get("/v1/whoami", headers=bearer(outcome.session_token)).json()
        assert me["mfa_verified_at"] is not None
        with pytest.raises(AuthError):  # the pending sign-in is spent
            signins.step_done(
                world.cp, cookie, "extra", signin.StepResult(), client_addr=None, request_id=None
            )
    finally:
        signin.STEPS[:] = [s for s in signin.STEPS if s.name != "extra"]


def test_a_device_page_sends_a_stranger_to_sign_in_and_back(world: World) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    away = world.api.get("/web/device", params={"code": start["user_code"]}, follow_redirects=False)
    assert away.status_code == 303
    target = parse_qs(urlsplit(away.headers["location"]).query)["next"][0]
    assert target == f"/web/device?code={start['user_code']}"
    listing = world.api.get("/web/signin", params={"next": target})
    assert "next=/web/device%3Fcode%3D" in listing.text
    assert signed_in_to(world.sign_in("bob", next=target)) == target


def test_another_provider_cannot_take_over_a_user_by_an_unverified_address(
    world: World,
) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", email_verified=True)
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    r = world.api.post(
        "/v1/idps",
        headers=world.admin,
        json={"name": "other", "issuer": world.issuer, "client_id": "x", "client_secret": "y"},
    )
    assert r.status_code == 201
    # The same provider process stands in for another one: a new subject claiming bob's address.
    world.set_user("mallory", email="bob@example.com")
    world.api.cookies.clear()
    start = world.api.get("/web/signin", params={"idp": "other"}, follow_redirects=False)
    back = world.idp_login(start.headers["location"], "mallory").removeprefix(PUBLIC)
    refused = world.api.get(back, follow_redirects=False)
    assert refused.status_code == 401 and "another identity provider" in refused.text
