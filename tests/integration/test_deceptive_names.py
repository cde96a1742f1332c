"""Names that deceive, tried through the API: hidden characters, IDNA labels, look-alikes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, AuditEvent, JoinToken, Membership, Org, Secret, Token, User
from tests.conftest import Installation, bearer, mint_token

# One of each kind; tests/unit/test_names.py tries the full list against the rules.
HIDDEN = {
    "NUL": "\x00",
    "newline": "\n",
    "C1 NEL": "\x85",
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "right-to-left override": "\u202e",
    "first strong isolate": "\u2068",
    "byte-order mark": "\ufeff",
    "soft hyphen": "\u00ad",
    "no-break space": "\u00a0",
    "Hangul filler": "\u3164",
}


def count(cp: ControlPlane, table: Any) -> int:
    with cp.db.read() as session:
        return int(session.execute(select(func.count()).select_from(table)).scalar_one())


def _placed(text: str, char: str) -> list[str]:
    middle = len(text) // 2
    return [char + text, text[:middle] + char + text[middle:], text + char]


def _fields(h: dict[str, str]) -> list[tuple[str, str, str, Any, str, Any]]:
    """(what, method, path, table, the name, how to build the body from a name)."""
    return [
        ("org name", "POST", "/v1/orgs", Org, "clinic", lambda n: {"name": n}),
        ("app name", "POST", "/v1/apps", App, "clinic-api", lambda n: {"name": n, "org": "acme"}),
        (
            "network name",
            "POST",
            "/v1/apps",
            App,
            "backend",
            lambda n: {"name": "netted", "org": "acme", "network": n},
        ),
        (
            "token name",
            "POST",
            "/v1/tokens",
            Token,
            "deploy key",
            lambda n: {"kind": "org", "org": "acme", "name": n},
        ),
        (
            "member e-mail",
            "POST",
            "/v1/orgs/acme/members",
            Membership,
            "nurse@example.com",
            lambda n: {"email": n},
        ),
        (
            "secret name",
            "PUT",
            "/v1/apps/web/secrets",
            Secret,
            "DATABASE_URL",
            lambda n: {"secrets": [{"name": n, "value": "v"}], "stage": True},
        ),
        (
            "host name",
            "POST",
            "/v1/hosts/join-tokens",
            JoinToken,
            "worker-1",
            lambda n: {"name": n},
        ),
    ]


@pytest.mark.parametrize("char", HIDDEN.values(), ids=HIDDEN.keys())
def test_hidden_characters_are_refused_in_every_name(
    api: TestClient, installation: Installation, control_plane: ControlPlane, char: str
) -> None:
    h = installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    for what, method, path, table, name, body in _fields(h):
        before = count(control_plane, table), count(control_plane, AuditEvent)
        for written in _placed(name, char):
            r = api.request(method, path, headers=h, json=body(written))
            assert r.status_code == 422, (what, repr(written), r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert (count(control_plane, table), count(control_plane, AuditEvent)) == before, what
        # The same name without the character is accepted: the refusal was for it alone.
        r = api.request(method, path, headers=h, json=body(name))
        assert r.status_code in (200, 201), (what, r.text)


@pytest.mark.parametrize(
    "label", ["xn--80ak6aa92e", "xn--e1afmkfd", "xn--pple-43d", "zz--top", "a1--b2"]
)
def test_idna_shaped_app_and_org_names_are_refused(
    api: TestClient, installation: Installation, control_plane: ControlPlane, label: str
) -> None:
    h = installation.headers
    before = count(control_plane, App), count(control_plane, Org)
    r = api.post("/v1/apps", headers=h, json={"name": label})
    assert r.status_code == 422 and "reserved" in r.text
    assert api.post("/v1/orgs", headers=h, json={"name": label}).status_code == 422
    assert api.post("/v1/apps", headers=h, json={"name": "ok", "network": label}).status_code == 422
    r = api.post("/v1/hosts/join-tokens", headers=h, json={"name": label})
    assert r.status_code == 422, r.text
    assert (count(control_plane, App), count(control_plane, Org)) == before
    # Hyphens elsewhere are ordinary.
    assert api.post("/v1/apps", headers=h, json={"name": "a-b--c"}).status_code == 201


@pytest.mark.parametrize(
    "email",
    [
        "\u0430dmin@example.com",  # Cyrillic a
        "admin@\u0435xample.com",  # Cyrillic e
        "\u03b1dmin@example.com",  # Greek alpha
        "admin\u200b@example.com",
        "admin@example.com\x00",
        "adm\u00adin@example.com",
    ],
)
def test_look_alikes_of_the_admin_cannot_join(
    api: TestClient, installation: Installation, control_plane: ControlPlane, email: str
) -> None:
    h = installation.headers
    users = count(control_plane, User)
    r = api.post("/v1/orgs/acme/members", headers=h, json={"email": email})
    assert r.status_code == 422, r.text
    assert count(control_plane, User) == users
    members = api.get("/v1/orgs/acme/members", headers=h).json()["items"]
    assert [m["email"] for m in members] == ["admin@example.com"]


def test_emails_are_normalized_before_storage_and_comparison(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    fullwidth = "\uff2e\uff35\uff32\uff33\uff25@Example.COM"  # NURSE in full-width letters
    r = api.post("/v1/orgs/acme/members", headers=h, json={"email": fullwidth})
    assert r.status_code == 201 and r.json()["email"] == "nurse@example.com"
    # The same person however written: no second member, no second user.
    for again in ("nurse@example.com", "NURSE@EXAMPLE.COM", "Nurse@example.com"):
        assert (
            api.post("/v1/orgs/acme/members", headers=h, json={"email": again}).status_code == 409
        )
    # The admin cannot be shadowed by a differently written copy either.
    r = api.post("/v1/orgs/acme/members", headers=h, json={"email": "ADMIN@example.com"})
    assert r.status_code == 409
    with control_plane.db.read() as session:
        emails = sorted(session.execute(select(User.email)).scalars())
    assert emails == ["admin@example.com", "nurse@example.com"]
    # Lookups by address normalize too.
    r = api.patch(
        "/v1/orgs/acme/members/" + quote("NURSE@example.com"), headers=h, json={"role": "viewer"}
    )
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    # And the audit trail names the one form.
    token = mint_token(control_plane, "nurse@example.com", kind="org", org="acme")
    assert api.get("/v1/apps", headers=bearer(token)).status_code == 200
    r = api.post("/v1/apps", headers=bearer(token), json={"name": "x"})
    assert r.status_code == 403
    with control_plane.db.read() as session:
        actors = set(session.execute(select(AuditEvent.actor)).scalars())
    assert actors <= {"admin@example.com", "nurse@example.com", "anonymous"}


@pytest.mark.parametrize("char", HIDDEN.values(), ids=HIDDEN.keys())
def test_hidden_characters_in_urls_are_a_400_problem(
    api: TestClient, installation: Installation, char: str
) -> None:
    h = installation.headers
    encoded = quote(char)
    for url in (
        f"/v1/apps/web{encoded}",
        f"/v1/orgs/acme{encoded}/members",
        f"/v1/orgs/acme/members/admin{encoded}@example.com",
        f"/v1/apps?org=acme{encoded}",
        f"/v1/tokens?cursor={encoded}",
        f"/v1/audit/events?org={encoded}acme",
    ):
        for headers in (h, {}):
            r = api.get(url, headers=headers)
            assert r.status_code == 400, (url, r.status_code, r.text)
            body = r.json()
            assert r.headers["content-type"] == "application/problem+json"
            assert body["status"] == 400 and body["request_id"] == r.headers["x-request-id"]
            assert f"U+{ord(char):04X}" in body["detail"]
    # Ordinary percent-encoding is untouched.
    assert api.get("/v1/apps?org=acme&limit=5", headers=h).status_code == 200
    assert api.get(
        "/v1/orgs/acme/members/" + quote("admin@example.com"), headers=h
    ).status_code in (
        404,
        405,
    )
