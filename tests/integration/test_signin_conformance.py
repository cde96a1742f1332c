"""Sign-in against a certified OpenID provider (npm oidc-provider) that requires PKCE.

Hangar's authorization request, code exchange (S256 verifier, client
authentication) and ID-token checks must satisfy a strict provider; and a
code stolen from one browser's callback must not sign in another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from tests.conftest import bearer, make_installation
from tests.integration.test_signin import signed_in_to, through_steps
from tests.oidc.node import log_in, node_provider

PUBLIC = "https://testserver"
SECRET = "conformance-secret-0123456789"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    inst = make_installation(tmp_path / "data", public_url=PUBLIC)
    cp = ControlPlane.open(inst.settings)
    with (
        node_provider(PUBLIC + "/web/callback", SECRET) as issuer,
        TestClient(create_app(cp), base_url=PUBLIC, raise_server_exceptions=False) as api,
    ):
        r = api.post(
            "/v1/idps",
            headers=inst.headers,
            json={
                "name": "certified",
                "issuer": issuer,
                "client_id": "hangar",
                "client_secret": SECRET,
                "scopes": ["email", "offline_access"],
            },
        )
        assert r.status_code == 201, r.text
        r = api.post(
            "/v1/orgs/acme/members", headers=inst.headers, json={"email": "bob@example.com"}
        )
        assert r.status_code == 201, r.text
        yield api, issuer
    cp.close()


def test_sign_in_with_pkce_against_a_certified_provider(world: tuple[TestClient, str]) -> None:
    api, _ = world
    start = api.get("/web/signin", params={"idp": "certified"}, follow_redirects=False)
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    back = log_in(start.headers["location"], "bob")
    done = through_steps(api, api.get(back.removeprefix(PUBLIC), follow_redirects=False))
    assert signed_in_to(done) == "/web/"
    token = api.cookies.get("__Host-hangar-session") or ""
    assert api.get("/v1/whoami", headers=bearer(token)).json()["email"] == "bob@example.com"


def test_a_stolen_code_does_not_sign_in_another_browser(world: tuple[TestClient, str]) -> None:
    """The code is bound to the victim's PKCE verifier, which only the victim's sign-in holds."""
    api, _ = world
    victim = api.get("/web/signin", params={"idp": "certified"}, follow_redirects=False)
    stolen = parse_qs(urlsplit(log_in(victim.headers["location"], "bob")).query)["code"][0]
    with TestClient(api.app, base_url=PUBLIC, raise_server_exceptions=False) as attacker:
        own = attacker.get("/web/signin", params={"idp": "certified"}, follow_redirects=False)
        state = parse_qs(urlsplit(own.headers["location"]).query)["state"][0]
        r = attacker.get(
            "/web/callback", params={"state": state, "code": stolen}, follow_redirects=False
        )
        assert r.status_code == 401
        assert "refused the code" in r.text
        assert not attacker.cookies.get("__Host-hangar-session")
