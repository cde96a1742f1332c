"""Signing in as an attacker, an operator and a new person would try it.

RFC 8628 polling as the RFC writes it, and the edges of sessions, pages
and second-factor steps that the happy paths do not reach.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from sqlalchemy import select, update

from hangar.auth.policy import IdentityPolicy, save_policy
from hangar.auth.rbac import Role
from hangar.controlplane import devicecodes, signins
from hangar.crypto.macaroons import Macaroon
from hangar.store.tables import DeviceCode, Org
from tests.conftest import bearer
from tests.integration.test_signin import (  # noqa: F401
    World,
    _events,
    provider,
    signed_in_to,
    world,
)

# The sign-in tests' fixtures (a provider on loopback, Hangar beside it) are used as they are.

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _approve(world: World, user_code: str) -> None:  # noqa: F811
    world.sign_in("bob")
    csrf = world.api.cookies.get("__Host-hangar-csrf") or ""
    ok = world.api.post(
        "/web/device", data={"code": user_code, "decision": "approve", "csrf": csrf}
    )
    assert ok.status_code == 200, ok.text


def test_device_token_takes_the_rfc_form(world: World) -> None:  # noqa: F811
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    form = {"grant_type": GRANT, "device_code": start["device_code"], "client_id": "hangar-cli"}
    pending = world.api.post("/v1/auth/device/token", data=form)
    assert pending.status_code == 400, pending.text
    assert pending.json()["error"] == "authorization_pending"
    assert pending.headers["cache-control"] == "no-store"
    _approve(world, start["user_code"])
    got = world.api.post("/v1/auth/device/token", data=form)
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    assert world.api.get("/v1/whoami", headers=bearer(got.json()["token"])).json()["email"] == (
        "bob@example.com"
    )


def test_device_token_errors_are_the_rfcs(world: World) -> None:  # noqa: F811
    start = world.api.post("/v1/auth/device").json()
    wrong = {"grant_type": "password", "device_code": start["device_code"]}
    r = world.api.post("/v1/auth/device/token", data=wrong)
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")
    r = world.api.post("/v1/auth/device/token", data={"grant_type": GRANT})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = world.api.post(
        "/v1/auth/device/token",
        content=b"\xff\xfe",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = world.api.post(
        "/v1/auth/device/token", content=b"device_code=x", headers={"content-type": "text/plain"}
    )
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = world.api.post("/v1/auth/device/token", data={"grant_type": GRANT, "device_code": "z" * 40})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant")


def test_polling_too_fast_slows_the_device_down_and_it_stays_slowed(
    world: World,  # noqa: F811
) -> None:
    start = world.api.post("/v1/auth/device").json()
    with world.cp.db.write() as session:
        session.execute(update(DeviceCode).values(interval_s=55))
    form = {"grant_type": GRANT, "device_code": start["device_code"]}
    first = world.api.post("/v1/auth/device/token", data=form)
    assert first.json()["error"] == "authorization_pending"
    # Well within 55 seconds of the first poll: slow down, and the interval grows (and is kept).
    second = world.api.post("/v1/auth/device/token", data=form)
    assert second.json()["error"] == "slow_down", second.text
    with world.cp.db.read() as session:
        row = session.execute(select(DeviceCode)).scalar_one()
    assert row.interval_s == 60 and row.last_polled_at is not None
    third = world.api.post("/v1/auth/device/token", data=form)
    assert third.json()["error"] == "slow_down"


def test_a_denied_device_gets_access_denied(world: World) -> None:  # noqa: F811
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    world.sign_in("bob")
    csrf = world.api.cookies.get("__Host-hangar-csrf") or ""
    r = world.api.post(
        "/web/device", data={"code": start["user_code"], "decision": "deny", "csrf": csrf}
    )
    assert r.status_code == 200, r.text
    form = {"grant_type": GRANT, "device_code": start["device_code"]}
    got = world.api.post("/v1/auth/device/token", data=form)
    assert (got.status_code, got.json()["error"]) == (400, "access_denied")


def _narrowed(token: str, *caveats: str) -> str:
    return Macaroon.parse(token).attenuate(*caveats).serialize()


def test_a_narrowed_session_token_cannot_act_as_the_person_on_web_pages(
    world: World,  # noqa: F811
) -> None:
    """A read-only copy of a session's token (given to a script) approves no device:
    the device would get a whole session, writes and all."""
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    whole = world.api.cookies.get("__Host-hangar-session") or ""
    start = world.api.post("/v1/auth/device").json()
    for caveat in ("actions = read", "apps = web"):
        world.api.cookies.set("__Host-hangar-session", _narrowed(whole, caveat))
        form = world.api.get("/web/device", params={"code": start["user_code"]})
        assert "Approve only if you started it" not in form.text
        csrf = world.api.cookies.get("__Host-hangar-csrf") or ""
        world.api.post(
            "/web/device", data={"code": start["user_code"], "decision": "approve", "csrf": csrf}
        )
        poll = {"grant_type": GRANT, "device_code": start["device_code"]}
        got = world.api.post("/v1/auth/device/token", data=poll)
        assert got.status_code == 400 and got.json()["error"] != "access_denied", got.text
        with world.cp.db.write() as session:
            session.execute(update(DeviceCode).values(last_polled_at=None))


def test_a_device_approved_with_a_shorter_lived_copy_ends_with_it(
    world: World,  # noqa: F811
) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    world.sign_in("bob")
    whole = world.api.cookies.get("__Host-hangar-session") or ""
    soon = int(time.time()) + 1800
    world.api.cookies.set("__Host-hangar-session", _narrowed(whole, f"expires = {soon}"))
    start = world.api.post("/v1/auth/device").json()
    csrf = world.api.cookies.get("__Host-hangar-csrf") or ""
    ok = world.api.post(
        "/web/device", data={"code": start["user_code"], "decision": "approve", "csrf": csrf}
    )
    assert ok.status_code == 200, ok.text
    got = world.api.post(
        "/v1/auth/device/token", data={"grant_type": GRANT, "device_code": start["device_code"]}
    )
    assert got.status_code == 200, got.text
    ends = dt.datetime.fromisoformat(got.json()["expires_at"])
    assert ends <= dt.datetime.fromtimestamp(soon, dt.UTC)


def test_a_device_whose_approving_person_signed_out_collects_nothing(
    world: World,  # noqa: F811
) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    _approve(world, start["user_code"])
    r = world.api.post("/v1/users/bob@example.com/disable", headers=world.admin)
    assert r.status_code == 200, r.text
    got = world.api.post(
        "/v1/auth/device/token", data={"grant_type": GRANT, "device_code": start["device_code"]}
    )
    assert (got.status_code, got.json()["error"]) == (400, "expired_token"), got.text


def test_group_roles_need_the_provider_whose_groups_they_are(world: World) -> None:  # noqa: F811
    r = world.api.patch(
        "/v1/orgs/acme/policy", headers=world.admin, json={"set": {"group_roles": {"ops": "admin"}}}
    )
    assert r.status_code == 422 and "sso_idp" in r.text, r.text
    shown = world.api.get("/v1/orgs/acme/policy", headers=world.admin)
    assert shown.status_code == 200 and '"ops"' not in shown.text, shown.text


def test_another_providers_group_of_the_same_name_grants_nothing(
    world: World,  # noqa: F811
) -> None:
    """Another tenant's provider (added by the operator for them) names a group
    like one of acme's: its people must not become acme's admins."""
    r = world.api.post(
        "/v1/idps",
        headers=world.admin,
        json={
            "name": "theirs",
            "issuer": world.issuer,
            "client_id": "theirs",
            "client_secret": "s4",
        },
    )
    assert r.status_code == 201, r.text
    # A policy written before group_roles needed sso_idp.
    with world.cp.db.write() as session:
        org_id = session.execute(select(Org.id).where(Org.name == "acme")).scalar_one()
        save_policy(
            session, org_id, IdentityPolicy(), IdentityPolicy(group_roles={"ops": Role.ADMIN})
        )
    world.set_user("mallory", email="mallory@example.com", groups=["ops"])
    got = world.sign_in("mallory", idp="theirs")
    assert got.status_code == 401, got.text
    members = world.api.get("/v1/orgs/acme/members", headers=world.admin).json()["items"]
    assert "mallory@example.com" not in {m["email"] for m in members}


def test_every_web_answer_carries_the_pages_headers_errors_too(world: World) -> None:  # noqa: F811
    answers = [
        world.api.get("/web/no-such-page"),
        world.api.request("OPTIONS", "/web/signin"),
        world.api.post("/web/signout", content=b"{}", headers={"content-type": "application/json"}),
        world.api.post("/web/device", content=b"x" * 20000),
        world.api.get("/web/signin", params={"idp": "<script>alert(1)</script>"}),
        world.api.get("/web/device", follow_redirects=False),
    ]
    for answer in answers:
        where = (answer.request.method, answer.request.url.path, answer.status_code)
        csp = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, where
        assert answer.headers.get("x-frame-options") == "DENY", where
        assert answer.headers.get("x-content-type-options") == "nosniff", where
        assert "<script>" not in answer.text, where
    static = world.api.get("/web/static/hangar.css")
    assert static.headers["cache-control"] == "public, max-age=300"
    assert static.headers.get("x-frame-options") == "DENY"


def test_a_new_sso_idp_ends_sessions_through_other_providers(world: World) -> None:  # noqa: F811
    """A session made before the policy named its provider must not keep reaching
    the organization for the rest of its lifetime (hours, up to a week)."""
    r = world.api.post(
        "/v1/idps",
        headers=world.admin,
        json={"name": "other", "issuer": world.issuer, "client_id": "x", "client_secret": "s5"},
    )
    assert r.status_code == 201, r.text
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", email_verified=True)
    world.sign_in("bob", idp="other")
    through_other = world.api.cookies.get("__Host-hangar-session") or ""
    assert world.api.get("/v1/orgs/acme", headers=bearer(through_other)).status_code == 200
    world.api.cookies.clear()
    again = world.sign_in("bob")
    assert again.status_code == 200, again.text
    through_corp = world.api.cookies.get("__Host-hangar-session") or ""
    r = world.api.patch(
        "/v1/orgs/acme/policy", headers=world.admin, json={"set": {"sso_idp": "corp"}}
    )
    assert r.status_code == 200, r.text
    assert world.api.get("/v1/orgs/acme", headers=bearer(through_other)).status_code == 401
    assert world.api.get("/v1/orgs/acme", headers=bearer(through_corp)).status_code == 200
    ended = [e for e in _events(world.cp, "org.set_policy") if e.detail]
    assert any("sessions_ended" in (e.detail or "") for e in ended), [e.detail for e in ended]


def test_searching_for_device_codes_on_the_approval_page_is_limited_and_audited(
    world: World,  # noqa: F811
) -> None:
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com")
    start = world.api.post("/v1/auth/device").json()
    world.sign_in("bob")
    statuses = [
        world.api.get("/web/device", params={"code": f"BBBB-BBB{c}"}).status_code
        for c in "CDFGHJKLMN"
    ]
    assert statuses[0] == 200 and 429 in statuses, statuses
    # Limited, the right code is not shown either (it could be the one guessed).
    found = world.api.get("/web/device", params={"code": start["user_code"]})
    assert found.status_code == 429 and "Approve only if" not in found.text
    misses = [e for e in _events(world.cp, "auth.device.lookup") if e.outcome == "failure"]
    assert len(misses) >= 5 and all(e.actor == "bob@example.com" for e in misses)


def test_another_provider_cannot_take_an_operator_over_by_e_mail(
    world: World,  # noqa: F811
) -> None:
    """A provider added for one tenant vouches for the operator's address: the
    operator's installation-wide powers must not follow."""
    world.set_user("root", email="admin@example.com", email_verified=True)
    signed_in_to(world.sign_in("root"))
    r = world.api.post(
        "/v1/idps",
        headers=world.admin,
        json={"name": "theirs", "issuer": world.issuer, "client_id": "t", "client_secret": "s6"},
    )
    assert r.status_code == 201, r.text
    world.api.cookies.clear()
    world.set_user("mallory", email="admin@example.com", email_verified=True)
    got = world.sign_in("mallory", idp="theirs")
    assert got.status_code == 401 and "operator" in got.text, got.text
    refused = [e for e in _events(world.cp, "auth.signin") if e.outcome == "failure"]
    assert any(e.target == "admin@example.com" for e in refused)


def test_one_address_cannot_fill_the_waiting_sign_ins_for_everyone(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signins, "MAX_PENDING_PER_ADDR", 3)
    for _ in range(3):
        assert world.api.post("/v1/auth/device").status_code == 200
    refused = world.api.post("/v1/auth/device")
    assert refused.status_code == 429, refused.text
    for _ in range(3):
        started = world.api.get("/web/signin", params={"idp": "corp"}, follow_redirects=False)
        assert started.status_code == 302, started.text
    assert world.api.get("/web/signin", params={"idp": "corp"}).status_code == 429
    # Someone else, elsewhere, still can.
    assert devicecodes.start_device(world.cp, "198.51.100.7").user_code
