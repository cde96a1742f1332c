"""The second-factor step of a sign-in, through a real OpenID provider, as an attacker would."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from fastapi.testclient import TestClient

from tests.conftest import bearer
from tests.integration.test_factors import _assert_key, _enrol_key
from tests.integration.test_signin import (  # noqa: F401
    PUBLIC,
    World,
    provider,
    signed_in_to,
    world,
)

# The sign-in tests' fixtures (a provider on loopback, Hangar beside it) are used as they are.
from tests.softkey import SoftKey

STEP = "/web/signin/second-factor"


def _up_to_step(world: World, sub: str) -> httpx.Response:  # noqa: F811
    """Sign in at the provider and follow Hangar's callback to the step's page."""
    start = world.api.get("/web/signin", params={"idp": "corp"}, follow_redirects=False)
    back = world.idp_login(start.headers["location"], sub)
    done = world.api.get(back.removeprefix(PUBLIC), follow_redirects=False)
    assert done.headers["location"] == STEP, done.text
    return world.api.get(STEP, follow_redirects=False)


def _session(world: World) -> dict[str, str]:  # noqa: F811
    token = world.api.cookies.get("__Host-hangar-session")
    assert token
    return bearer(token)


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name=csrf value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


@pytest.fixture
def bob(world: World) -> Iterator[tuple[World, pyotp.TOTP]]:  # noqa: F811
    """bob, a member, signed in once (no factor yet), who then enrolled a TOTP app."""
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", email_verified=True)
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    h = _session(world)
    made = world.api.post("/v1/me/factors/totp", headers=h, json={"name": "phone"}).json()
    totp = pyotp.TOTP(made["secret"])
    confirmed = world.api.post(
        f"/v1/me/factors/totp/{made['factor']['id']}/confirm",
        headers=h,
        json={"code": totp.now()},
    )
    assert confirmed.status_code == 200, confirmed.text
    world.api.cookies.clear()
    yield world, totp


def _code(
    api: TestClient, page: httpx.Response, code: str, *, csrf: str | None = None
) -> httpx.Response:
    return api.post(
        f"{STEP}/code",
        data={"csrf": _csrf(page) if csrf is None else csrf, "method": "totp", "code": code},
        headers={"Origin": PUBLIC},
        follow_redirects=False,
    )


def test_a_person_with_a_factor_must_use_it_to_sign_in(
    bob: tuple[World, pyotp.TOTP],
) -> None:
    world, totp = bob  # noqa: F811
    page = _up_to_step(world, "bob")
    assert page.status_code == 200 and "authenticator app" in page.text
    assert "__Host-hangar-session" not in world.api.cookies
    later = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    wrong = f"{(int(later) + 1) % 1_000_000:06d}"
    refused = _code(world.api, page, wrong)
    assert refused.status_code == 401 and "__Host-hangar-session" not in world.api.cookies
    assert signed_in_to(_code(world.api, page, later)) == "/web/"
    # The session carries the second factor: it is as fresh as a step-up.
    shown = world.api.get("/v1/me/step-up", headers=_session(world)).json()
    assert shown["verified_at"] is not None


def test_the_step_refuses_a_forged_form_and_a_reused_code(
    bob: tuple[World, pyotp.TOTP],
) -> None:
    world, totp = bob  # noqa: F811
    page = _up_to_step(world, "bob")
    code = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    # Another site posting the form: no CSRF token of ours, another origin.
    forged = world.api.post(
        f"{STEP}/code",
        data={"csrf": "guess", "method": "totp", "code": code},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert signed_in_to(_code(world.api, page, code)) == "/web/"
    # The same code for a second sign-in, within its window.
    world.api.cookies.clear()
    again = _up_to_step(world, "bob")
    assert _code(world.api, again, code).status_code == 401


def test_a_security_key_only_policy_refuses_totp_at_sign_in(
    bob: tuple[World, pyotp.TOTP],
) -> None:
    world, totp = bob  # noqa: F811
    key = SoftKey(origin=PUBLIC, rp_id="testserver")
    _enrol_key(world.api, world.admin, key)
    assert _assert_key(world.api, world.admin, key).status_code == 200
    r = world.api.patch(
        "/v1/orgs/acme/policy", headers=world.admin, json={"set": {"require_mfa": "webauthn"}}
    )
    assert r.status_code == 200, r.text
    # bob's only factor does not count here: signing in asks nothing of him,
    # and the organization refuses him at its door, pointing him to a key.
    world.api.cookies.clear()
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    assert world.api.get("/v1/me/step-up", headers=_session(world)).json()["verified_at"] is None
    refused = world.api.get("/v1/orgs/acme/members", headers=_session(world))
    assert refused.status_code == 403 and "add-webauthn" in refused.json()["hint"]
    assert totp.now()


def test_an_identity_providers_mfa_counts_where_the_organization_accepts_it(
    world: World,  # noqa: F811
) -> None:
    key = SoftKey(origin=PUBLIC, rp_id="testserver")
    _enrol_key(world.api, world.admin, key)
    assert _assert_key(world.api, world.admin, key).status_code == 200
    r = world.api.patch(
        "/v1/orgs/acme/policy", headers=world.admin, json={"set": {"require_mfa": "any"}}
    )
    assert r.status_code == 200, r.text
    world.api.post("/v1/orgs/acme/members", headers=world.admin, json={"email": "bob@example.com"})
    world.set_user("bob", email="bob@example.com", email_verified=True, amr=["pwd", "mfa"])
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    # Not accepted: bob, with no factor of his own, is refused at the door, with a hint.
    refused = world.api.get("/v1/orgs/acme/members", headers=_session(world))
    assert refused.status_code == 403 and "enrol" in refused.json()["hint"]
    assert _assert_key(world.api, world.admin, key).status_code == 200
    r = world.api.patch(
        "/v1/orgs/acme/policy", headers=world.admin, json={"set": {"accept_idp_mfa": True}}
    )
    assert r.status_code == 200, r.text
    world.api.cookies.clear()
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    assert world.api.get("/v1/orgs/acme/members", headers=_session(world)).status_code == 200
    # Without the provider's word for a second factor, the door stays shut.
    world.set_user("bob", email="bob@example.com", email_verified=True, amr=["pwd"])
    world.api.cookies.clear()
    assert signed_in_to(world.sign_in("bob")) == "/web/"
    assert world.api.get("/v1/orgs/acme/members", headers=_session(world)).status_code == 403
