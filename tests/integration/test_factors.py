"""Second factors through the API, tried as an attacker would.

WebAuthn runs against a software authenticator that builds real attestation
and assertion objects (ES256, CBOR); TOTP codes come from pyotp with the
secret the API showed once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from hangar.api.app import create_app
from hangar.auth.stepup import POLICY_KEYS
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import AuditEvent, StepUp, UserFactor
from tests.conftest import Installation, bearer, mint_token
from tests.softkey import SoftKey

ORIGIN = "https://localhost:8443"


@pytest.fixture
def client(control_plane: ControlPlane) -> Iterator[TestClient]:
    # The public origin, so the pages' __Host- (Secure) cookies are sent back.
    with TestClient(create_app(control_plane), base_url=ORIGIN, raise_server_exceptions=False) as c:
        yield c


def _events(cp: ControlPlane, action: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).scalars()
        )


def _enrol_key(api: TestClient, h: dict[str, str], key: SoftKey) -> dict[str, Any]:
    started = api.post("/v1/me/factors/webauthn/options", headers=h)
    assert started.status_code == 200, started.text
    body = started.json()
    done = api.post(
        "/v1/me/factors/webauthn",
        headers=h,
        json={
            "challenge_id": body["challenge_id"],
            "credential": key.register(body["publicKey"]),
            "name": "yubikey",
        },
    )
    assert done.status_code == 201, done.text
    return dict(done.json())


def _options(api: TestClient, h: dict[str, str]) -> dict[str, Any]:
    r = api.post("/v1/me/step-up/options", headers=h)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _assert_key(api: TestClient, h: dict[str, str], key: SoftKey, **lie: Any) -> Any:
    started = _options(api, h)
    return api.post(
        "/v1/me/step-up",
        headers=h,
        json={
            "method": "webauthn",
            "challenge_id": started["challenge_id"],
            "credential": key.assertion(started["publicKey"], **lie),
        },
    )


def _enrol_totp(api: TestClient, h: dict[str, str]) -> tuple[str, pyotp.TOTP]:
    r = api.post("/v1/me/factors/totp", headers=h, json={"name": "phone"})
    assert r.status_code == 201, r.text
    totp = pyotp.TOTP(r.json()["secret"])
    factor_id = r.json()["factor"]["id"]
    confirmed = api.post(
        f"/v1/me/factors/totp/{factor_id}/confirm", headers=h, json={"code": totp.now()}
    )
    assert confirmed.status_code == 200, confirmed.text
    return factor_id, totp


def _key() -> SoftKey:
    return SoftKey(origin=ORIGIN, rp_id="localhost")


def test_a_security_key_enrols_and_steps_up(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    key = _key()
    factor = _enrol_key(client, h, key)
    assert factor["kind"] == "webauthn" and factor["name"] == "yubikey"
    listed = client.get("/v1/me/factors", headers=h).json()
    assert [f["id"] for f in listed["factors"]] == [factor["id"]]
    # Only the public key is kept: the listing shows neither key nor secret.
    assert "public_key" not in json.dumps(listed)
    assert client.get("/v1/me/step-up", headers=h).json()["verified_at"] is None
    r = _assert_key(client, h, key)
    assert r.status_code == 200, r.text
    assert client.get("/v1/me/step-up", headers=h).json()["verified_at"] is not None
    with control_plane.db.read() as session:
        row = session.get(UserFactor, factor["id"])
        assert row is not None and row.sign_count == key.sign_count == 1
    assert [e.outcome for e in _events(control_plane, "factor.add")] == ["success"]
    assert [e.outcome for e in _events(control_plane, "auth.step-up")] == ["success"]


def test_an_assertion_for_another_origin_or_rp_id_is_refused(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    key = _key()
    _enrol_key(client, h, key)
    # A phishing site relays the challenge: the browser writes its own origin.
    r = _assert_key(client, h, key, origin="https://hangar.example.evil")
    assert r.status_code == 401 and "origin" in r.json()["detail"].lower()
    # A key asked by another relying party signs that RP ID's hash.
    r = _assert_key(client, h, key, rp_id="evil.example")
    assert r.status_code == 401 and "rp id" in r.json()["detail"].lower()
    failures = _events(control_plane, "factor.verify")
    assert [e.outcome for e in failures] == ["failure", "failure"]
    assert client.get("/v1/me/step-up", headers=h).json()["verified_at"] is None


def test_registration_for_another_origin_is_refused(
    client: TestClient, installation: Installation
) -> None:
    h = installation.headers
    started = client.post("/v1/me/factors/webauthn/options", headers=h).json()
    r = client.post(
        "/v1/me/factors/webauthn",
        headers=h,
        json={
            "challenge_id": started["challenge_id"],
            "credential": _key().register(started["publicKey"], origin="https://evil.example"),
        },
    )
    assert r.status_code == 401
    assert client.get("/v1/me/factors", headers=h).json()["factors"] == []


def test_a_cloned_authenticator_is_refused_disabled_and_audited(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    key = _key()
    factor = _enrol_key(client, h, key)
    clone = key.clone()
    for _ in range(3):
        assert _assert_key(client, h, key).status_code == 200
    # The copy's counter is behind the original's: its signatures are genuine.
    r = _assert_key(client, h, clone)
    assert r.status_code == 401 and "cloned" in r.json()["detail"]
    cloned = _events(control_plane, "factor.cloned")
    assert len(cloned) == 1 and cloned[0].outcome == "denied"
    # The credential stays disabled: even the original is no longer asked for.
    assert client.post("/v1/me/step-up/options", headers=h).status_code == 404
    listed = client.get("/v1/me/factors", headers=h).json()["factors"]
    assert listed[0]["id"] == factor["id"] and "clone" in listed[0]["disabled"]


def test_a_replayed_challenge_or_assertion_is_refused(
    client: TestClient, installation: Installation
) -> None:
    h = installation.headers
    key = _key()
    _enrol_key(client, h, key)
    started = _options(client, h)
    answer = key.assertion(started["publicKey"])
    body = {"method": "webauthn", "challenge_id": started["challenge_id"], "credential": answer}
    assert client.post("/v1/me/step-up", headers=h, json=body).status_code == 200
    again = client.post("/v1/me/step-up", headers=h, json=body)
    assert again.status_code == 401 and "already answered" in again.json()["detail"]
    # A fresh challenge with the old answer: the challenge in it does not match.
    fresh = _options(client, h)
    body["challenge_id"] = fresh["challenge_id"]
    assert client.post("/v1/me/step-up", headers=h, json=body).status_code == 401


def test_a_challenge_answers_only_for_the_token_it_was_given_to(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    key = _key()
    _enrol_key(client, h, key)
    started = _options(client, h)
    other = bearer(mint_token(control_plane, "admin@example.com"))
    r = client.post(
        "/v1/me/step-up",
        headers=other,
        json={
            "method": "webauthn",
            "challenge_id": started["challenge_id"],
            "credential": key.assertion(started["publicKey"]),
        },
    )
    assert r.status_code == 401


def test_a_totp_code_is_refused_when_reused_within_its_window(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    r = client.post("/v1/me/factors/totp", headers=h, json={"name": "phone"})
    secret = r.json()["secret"]
    factor_id = r.json()["factor"]["id"]
    # The secret is stored wrapped by the KEK, never as it was shown.
    with control_plane.db.read() as session:
        row = session.get(UserFactor, factor_id)
        assert row is not None and row.secret_wrapped is not None
        assert secret.encode() not in row.secret_wrapped
    # An unconfirmed factor does not step up.
    totp = pyotp.TOTP(secret)
    code = totp.now()
    assert (
        client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": code}).status_code
        == 401
    )
    assert (
        client.post(
            f"/v1/me/factors/totp/{factor_id}/confirm", headers=h, json={"code": code}
        ).status_code
        == 200
    )
    # The code that confirmed it is spent; so is every code of that window.
    again = client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": code})
    assert again.status_code == 401 and "already used" in again.json()["detail"]
    previous = totp.at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))
    assert (
        client.post(
            "/v1/me/step-up", headers=h, json={"method": "totp", "code": previous}
        ).status_code
        == 401
    )
    nxt = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    assert (
        client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": nxt}).status_code
        == 200
    )
    assert (
        client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": nxt}).status_code
        == 401
    )


def test_failed_codes_back_off_even_a_right_code(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    _, totp = _enrol_totp(client, h)
    right = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    statuses = [
        client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": wrong}).status_code
        for _ in range(5)
    ]
    assert statuses == [401] * 5
    r = client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": right})
    assert r.status_code == 429 and "too many" in r.json()["detail"]
    assert _events(control_plane, "factor.rate-limited")
    assert len(_events(control_plane, "factor.verify")) == 5


def test_recovery_codes_work_once_and_are_stored_hashed(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    codes = client.post("/v1/me/recovery-codes", headers=h).json()["codes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    db = b"".join(p.read_bytes() for p in installation.settings.data_dir.glob("hangar.db*"))
    assert not any(c.encode() in db for c in codes)
    code = codes[0]
    typed = code.upper().replace("-", " ")
    r = client.post("/v1/me/step-up", headers=h, json={"method": "recovery", "code": typed})
    assert r.status_code == 200, r.text
    again = client.post("/v1/me/step-up", headers=h, json={"method": "recovery", "code": code})
    assert again.status_code == 401
    assert client.get("/v1/me/factors", headers=h).json()["recovery_codes_left"] == 9


def _require(client: TestClient, h: dict[str, str], **policy: Any) -> None:
    r = client.patch("/v1/orgs/acme/policy", headers=h, json={"set": policy})
    assert r.status_code == 200, r.text


def _add_member(client: TestClient, h: dict[str, str], email: str, role: str) -> None:
    r = client.post("/v1/orgs/acme/members", headers=h, json={"email": email, "role": role})
    assert r.status_code == 201, r.text


def test_a_member_without_a_factor_is_refused_under_require_mfa(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    _add_member(client, h, "bob@example.com", "member")
    bob = bearer(mint_token(control_plane, "bob@example.com"))
    assert client.get("/v1/orgs/acme/members", headers=bob).status_code == 200
    # The admin turns the policy on only with a factor of their own, stepped up.
    refused = client.patch(
        "/v1/orgs/acme/policy", headers=h, json={"set": {"require_mfa": "webauthn"}}
    )
    assert refused.status_code == 403 and refused.json()["type"].endswith("/mfa-required")
    key = _key()
    _enrol_key(client, h, key)
    assert _assert_key(client, h, key).status_code == 200
    _require(client, h, require_mfa="webauthn")
    r = client.get("/v1/orgs/acme/members", headers=bob)
    assert r.status_code == 403 and r.json()["type"].endswith("/mfa-required")
    assert "add-webauthn" in r.json()["hint"]
    assert _events(control_plane, "auth.mfa-required")[-1].outcome == "denied"
    # TOTP does not satisfy "webauthn"; it satisfies "any" unless TOTP is forbidden.
    _enrol_totp(client, bob)
    assert client.get("/v1/orgs/acme/members", headers=bob).status_code == 403
    assert _assert_key(client, h, key).status_code == 200
    _require(client, h, require_mfa="any")
    assert client.get("/v1/orgs/acme/members", headers=bob).status_code == 200
    _require(client, h, allow_totp=False)
    assert client.get("/v1/orgs/acme/members", headers=bob).status_code == 403
    # Enrolment stays open to him: it is how he gets in.
    assert client.post("/v1/me/factors/webauthn/options", headers=bob).status_code == 200


def test_sensitive_actions_need_a_fresh_step_up(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    client.post("/v1/apps", headers=h, json={"name": "web"})
    key = _key()
    _enrol_key(client, h, key)
    assert _assert_key(client, h, key).status_code == 200
    _require(client, h, require_mfa="webauthn", step_up_minutes=10)
    put = {"secrets": [{"name": "K", "value": "v"}]}
    assert client.put("/v1/apps/web/secrets", headers=h, json=put).status_code == 200
    # The same credential, its step-up 16 minutes old: past the organization's
    # 10 minutes and the installation's 15 (KEK rotation).
    with control_plane.db.write() as session:
        session.execute(
            update(StepUp).values(verified_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=16))
        )
    r = client.put("/v1/apps/web/secrets", headers=h, json=put)
    assert r.status_code == 403 and r.json()["type"].endswith("/step-up-required")
    assert "hangar auth step-up" in r.json()["hint"]
    for refused in (
        client.delete("/v1/apps/web/secrets?name=K", headers=h),
        client.post("/v1/orgs/acme/members", headers=h, json={"email": "x@example.com"}),
        client.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}),
        client.patch("/v1/orgs/acme/policy", headers=h, json={"set": {"require_mfa": "off"}}),
        client.patch("/v1/orgs/acme/policy", headers=h, json={"set": {"idle_timeout": 900}}),
        client.post("/v1/system/rotate-kek", headers=h),
    ):
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"].endswith("/step-up-required"), refused.text
    # Reading is not sensitive.
    assert client.get("/v1/apps/web/secrets", headers=h).status_code == 200
    denied = [e for e in _events(control_plane, "auth.step-up") if e.outcome == "denied"]
    assert len(denied) == 7
    # A new token of the same person carries no freshness of its own.
    fresh = bearer(mint_token(control_plane, "admin@example.com"))
    assert client.put("/v1/apps/web/secrets", headers=fresh, json=put).status_code == 403
    assert _assert_key(client, h, key).status_code == 200
    assert client.put("/v1/apps/web/secrets", headers=h, json=put).status_code == 200


def test_automation_tokens_take_sensitive_actions_only_where_allowed(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    client.post("/v1/apps", headers=h, json={"name": "web"})
    ci = bearer(mint_token(control_plane, "admin@example.com", kind="org", org="acme"))
    key = _key()
    _enrol_key(client, h, key)
    assert _assert_key(client, h, key).status_code == 200
    _require(client, h, require_mfa="webauthn")
    put = {"secrets": [{"name": "K", "value": "v"}]}
    r = client.put("/v1/apps/web/secrets", headers=ci, json=put)
    assert r.status_code == 403 and "automation_tokens" in r.json()["hint"]
    # Nor can it step up, or enrol a key of its own for its holder.
    assert client.post("/v1/me/step-up/options", headers=ci).status_code == 403
    assert client.post("/v1/me/factors/webauthn/options", headers=ci).status_code == 403
    _require(client, h, automation_tokens=True)
    assert client.put("/v1/apps/web/secrets", headers=ci, json=put).status_code == 200
    waived = _events(control_plane, "auth.step-up-waived")
    assert len(waived) == 1 and "automation_tokens" in waived[0].detail


def test_changing_factors_needs_a_step_up_once_one_exists(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    key = _key()
    first = _enrol_key(client, h, key)
    # A stolen credential cannot quietly add its holder's key, or drop the owner's.
    started = client.post("/v1/me/factors/webauthn/options", headers=h).json()
    r = client.post(
        "/v1/me/factors/webauthn",
        headers=h,
        json={
            "challenge_id": started["challenge_id"],
            "credential": _key().register(started["publicKey"]),
        },
    )
    assert r.status_code == 403 and r.json()["type"].endswith("/step-up-required")
    assert client.delete(f"/v1/me/factors/{first['id']}", headers=h).status_code == 403
    assert client.post("/v1/me/recovery-codes", headers=h).status_code == 403
    assert _assert_key(client, h, key).status_code == 200
    assert client.delete(f"/v1/me/factors/{first['id']}", headers=h).status_code == 204
    assert [e.outcome for e in _events(control_plane, "factor.remove")] == [
        "denied",
        "success",
    ]


def test_policy_keys_are_validated(client: TestClient, installation: Installation) -> None:
    h = installation.headers
    for bad in (
        {"require_mfa": "sms"},
        {"step_up_minutes": 0},
        {"step_up_minutes": True},
        {"allow_totp": "yes"},
        {"require_mfa_typo": "off"},
    ):
        r = client.patch("/v1/orgs/acme/policy", headers=h, json={"set": bad})
        assert r.status_code == 422, (bad, r.text)
    # Nothing half-written: a bad second-factor key stops a good sign-in key too.
    r = client.patch(
        "/v1/orgs/acme/policy",
        headers=h,
        json={"set": {"idle_timeout": 900, "step_up_minutes": 0}},
    )
    assert r.status_code == 422
    shown = client.get("/v1/orgs/acme/policy", headers=h).json()
    assert shown["idle_timeout"] != 900
    assert {k: shown[k] for k in POLICY_KEYS} == {
        "require_mfa": "off",
        "accept_idp_mfa": False,
        "allow_totp": True,
        "step_up_minutes": 15,
        "automation_tokens": False,
    }


def test_kek_rotation_rewraps_totp_secrets(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    factor_id, totp = _enrol_totp(client, h)
    with control_plane.db.read() as session:
        before = session.get(UserFactor, factor_id)
        assert before is not None
    r = client.post(
        "/v1/me/step-up",
        headers=h,
        json={
            "method": "totp",
            "code": totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)),
        },
    )
    assert r.status_code == 200
    rotated = client.post("/v1/system/rotate-kek", headers=h)
    assert rotated.status_code == 200, rotated.text
    with control_plane.db.read() as session:
        after = session.get(UserFactor, factor_id)
        assert after is not None and after.secret_wrapped != before.secret_wrapped
    # The secret still opens (under the new KEK): the step after next verifies.
    with control_plane.db.write() as session:
        session.execute(update(UserFactor).values(last_step=None))
    r = client.post("/v1/me/step-up", headers=h, json={"method": "totp", "code": totp.now()})
    assert r.status_code == 200, r.text


def _open_link(client: TestClient, h: dict[str, str], kind: str = "factors/webauthn") -> str:
    r = client.post(f"/v1/me/{kind}/link", headers=h)
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    assert url.startswith(ORIGIN + "/web/")
    return str(url.removeprefix(ORIGIN))


def _csrf_of(page_text: str) -> str:
    import re

    found = re.search(r'name=csrf value="([^"]+)"', page_text)
    assert found, page_text
    return found.group(1)


def test_the_enrol_page_is_one_time_strict_and_csrf_protected(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    path = _open_link(client, h)
    landed = client.get(path, follow_redirects=False)
    assert landed.status_code == 303 and landed.headers["location"] == "/web/factors/enrol"
    assert "__Host-hangar-factors" in landed.headers["set-cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert flag.lower() in landed.headers["set-cookie"].lower()
    # The link is spent: opening it again (someone who saw it) gets nothing.
    assert client.get(path, follow_redirects=False).status_code == 401
    page = client.get("/web/factors/enrol")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and "onclick" not in page.text
    csrf = _csrf_of(page.text)
    own = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
    # Another site's form post: no token, or another origin, or a guessed token.
    for headers in (
        {"Origin": ORIGIN},
        {"Origin": "https://evil.example", "X-CSRF-Token": csrf},
        {"Origin": ORIGIN, "X-CSRF-Token": "guess"},
    ):
        r = client.post("/web/factors/enrol/options", headers=headers)
        assert r.status_code == 403, (headers, r.text)
    started = client.post("/web/factors/enrol/options", headers=own)
    assert started.status_code == 200, started.text
    body = started.json()
    key = _key()
    done = client.post(
        "/web/factors/enrol",
        headers=own,
        json={
            "challenge_id": body["challenge_id"],
            "credential": key.register(body["publicKey"]),
            "name": "from the page",
        },
    )
    assert done.status_code == 201, done.text
    assert [f["name"] for f in client.get("/v1/me/factors", headers=h).json()["factors"]] == [
        "from the page"
    ]
    # The ticket serves the one page it was made for: not the step-up page.
    assert client.post("/web/factors/step-up/options", headers=own).status_code == 401
    # A revoked login takes its page ticket with it.
    me = client.get("/v1/whoami", headers=h).json()["token_id"]
    assert client.delete(f"/v1/tokens/{me}", headers=h).status_code == 204
    assert client.post("/web/factors/enrol/options", headers=own).status_code == 401
    refusals = [e for e in _events(control_plane, "http.403") if e.outcome == "denied"]
    assert len(refusals) >= 3


def test_an_automation_token_gets_no_factor_page(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    ci = bearer(mint_token(control_plane, "admin@example.com", kind="org", org="acme"))
    assert client.post("/v1/me/factors/webauthn/link", headers=ci).status_code == 403
    assert client.post("/v1/me/step-up/link", headers=ci).status_code == 403
    assert client.post("/v1/me/factors/totp", headers=ci, json={}).status_code == 403


def test_an_operator_resets_the_factors_of_a_person_who_lost_them(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    _add_member(client, h, "bob@example.com", "member")
    bob = bearer(mint_token(control_plane, "bob@example.com"))
    _, totp = _enrol_totp(client, bob)
    later = totp.at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    assert (
        client.post(
            "/v1/me/step-up", headers=bob, json={"method": "totp", "code": later}
        ).status_code
        == 200
    )
    assert client.post("/v1/me/recovery-codes", headers=bob).status_code == 201
    # bob cannot do it for himself, nor for anyone: it is an operator's power.
    assert client.delete("/v1/users/admin@example.com/factors", headers=bob).status_code == 403
    # The operator has a factor: the reset is held to a step-up like any sensitive action.
    key = _key()
    _enrol_key(client, h, key)
    refused = client.delete("/v1/users/bob@example.com/factors", headers=h)
    assert refused.status_code == 403 and refused.json()["type"].endswith("/step-up-required")
    assert _assert_key(client, h, key).status_code == 200
    done = client.delete("/v1/users/bob@example.com/factors", headers=h)
    assert done.status_code == 200, done.text
    assert done.json() == {"factors": 1, "recovery_codes": 10}
    listed = client.get("/v1/me/factors", headers=bob).json()
    assert listed == {"factors": [], "recovery_codes_left": 0}
    assert [e.outcome for e in _events(control_plane, "factor.reset")] == ["success"]
    assert client.delete("/v1/users/admin@example.com/factors", headers=h).status_code == 409


def test_a_refused_policy_change_changes_neither_half(
    client: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    # A request with second-factor and sign-in keys is judged before either half
    # is written: refused, it changes nothing.
    h = installation.headers
    ci = bearer(mint_token(control_plane, "admin@example.com", kind="org", org="acme"))
    key = _key()
    _enrol_key(client, h, key)
    assert _assert_key(client, h, key).status_code == 200
    _require(client, h, require_mfa="webauthn", automation_tokens=True, idle_timeout=900)
    before = client.get("/v1/orgs/acme/policy", headers=h).json()
    body = {"set": {"step_up_minutes": 5, "idle_timeout": 600}}
    r = client.patch("/v1/orgs/acme/policy", headers=ci, json=body)
    assert r.status_code == 403, r.text
    assert client.get("/v1/orgs/acme/policy", headers=h).json() == before
    assert before["idle_timeout"] == 900 and before["step_up_minutes"] != 5
