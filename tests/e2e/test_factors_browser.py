"""Security keys in a real browser: Debian's chromium, a DevTools virtual authenticator,
a real `hangar server run` over HTTPS, and the CLI that opens the pages."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.test_cli_flow import HANGAR, Server, free_port, init, login, start, stop

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"


def _spki_hash(port: int) -> str:
    """The server certificate's SPKI SHA-256, for chromium to trust it as if a CA signed it."""
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    cert = x509.load_pem_x509_certificate(pem.encode())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run `make deps`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    data_dir = tmp_path / "data"
    token_file = tmp_path / "admin.token"
    init(data_dir, token_file, env)
    port = free_port()
    # Browsers reach the API as https://localhost:PORT: the relying party is "localhost".
    env["HANGAR_PUBLIC_URL"] = f"https://localhost:{port}"
    proc = start(data_dir, env, port)
    srv = Server(data_dir, f"https://localhost:{port}", token_file.read_text().strip(), env, proc)
    try:
        yield srv
    finally:
        stop(srv.process)


@pytest.fixture
def browser(server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    port = int(server.api.rsplit(":", 1)[1])
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--ignore-certificate-errors-spki-list={_spki_hash(port)}",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _page_with_key(browser: Any) -> tuple[Any, Any, str]:
    """A page with a virtual security key (CTAP2, user present and verified)."""
    context = browser.new_context()
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    made = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return page, cdp, made["authenticatorId"]


def _url_from(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "://" in line and "/web/factors/" in line:
            return line.strip()
    raise AssertionError("the CLI printed no link")


def _api(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.api,
        headers={"Authorization": f"Bearer {server.token}"},
        verify=ssl.create_default_context(cafile=str(server.data_dir / "ca.crt")),
    )


def test_a_security_key_enrols_in_the_browser_and_steps_up_the_cli(
    server: Server, browser: Any
) -> None:
    login(server)
    page, cdp, authenticator = _page_with_key(browser)
    # `hangar auth factors add-webauthn` prints the one-time link (no browser here opens it).
    out = server.cli("auth", "factors", "add-webauthn", "--no-browser")
    url = next(w for w in out.stdout.split() if "/web/factors/enrol?code=" in w)
    page.goto(url)
    # The code is spent and gone from the address; the page is strict.
    assert page.url.endswith("/web/factors/enrol")
    page.fill("#name", "virtual key")
    page.click("#enrol-button")
    page.wait_for_selector("#status.done", timeout=30_000)
    listed = server.json("auth", "factors", "list")
    assert isinstance(listed, dict)
    keys = [f for f in listed["factors"] if f["kind"] == "webauthn"]
    assert [k["name"] for k in keys] == ["virtual key"]
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    assert len(stored["credentials"]) == 1
    # The link works once: a second visit (another browser) is refused.
    other = browser.new_context().new_page()
    refused = other.goto(url)
    assert refused is not None and refused.status == 401

    # `hangar auth step-up` waits while the browser answers with the key.
    proc = subprocess.Popen(
        [*HANGAR, "auth", "step-up", "--no-browser"],
        env={**server.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page.goto(_url_from(proc))
        page.click("#challenge-button")
        page.wait_for_selector("#status.done", timeout=30_000)
        out_text, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Stepped up" in out_text
    with _api(server) as api:
        assert api.get("/v1/me/step-up").json()["verified_at"] is not None
        after = api.get("/v1/me/factors").json()["factors"]
    # The authenticator's counter moved past what enrolment stored.
    assert next(f["sign_count"] for f in after if f["kind"] == "webauthn") >= 1


def test_a_key_made_for_hangar_does_not_answer_another_origin(server: Server, browser: Any) -> None:
    """The browser itself binds a credential to its relying party: a page at another
    origin (the same server, reached by address) cannot use it, even with the id."""
    login(server)
    page, cdp, authenticator = _page_with_key(browser)
    out = server.cli("auth", "factors", "add-webauthn", "--no-browser")
    page.goto(next(w for w in out.stdout.split() if "/web/factors/enrol?code=" in w))
    page.click("#enrol-button")
    page.wait_for_selector("#status.done", timeout=30_000)
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    cred_id = stored["credentials"][0]["credentialId"]
    port = server.api.rsplit(":", 1)[1]
    stranger = browser.new_context().new_page()
    stranger.goto(f"https://127.0.0.1:{port}/v1/healthz")
    result = stranger.evaluate(
        """async (id) => {
            const raw = Uint8Array.from(atob(id), c => c.charCodeAt(0));
            try {
                await navigator.credentials.get({publicKey: {
                    challenge: new Uint8Array(32), rpId: "localhost",
                    allowCredentials: [{type: "public-key", id: raw}], timeout: 5000}});
                return "answered";
            } catch (e) { return e.name; }
        }""",
        cred_id,
    )
    assert result in ("SecurityError", "NotAllowedError"), result


def test_totp_and_recovery_codes_through_the_cli(server: Server) -> None:
    import pyotp

    login(server)
    made = server.json("auth", "factors", "add-totp", "--name", "phone")
    assert isinstance(made, dict) and made["factor"]["confirmed"] is False
    totp = pyotp.TOTP(made["secret"])
    fid = made["factor"]["id"]
    server.cli("auth", "factors", "confirm", fid, "--code", totp.now())
    # With a factor, new recovery codes need a step-up first: a clear error and a hint.
    refused = server.cli("auth", "factors", "recovery-codes", "--yes", check=False)
    assert refused.returncode != 0
    assert "error:" in refused.stderr and "hangar auth step-up" in refused.stderr
    later = totp.at(time.time() + 30)
    out = server.cli("auth", "step-up", "--totp", "--code", "-", stdin=later + "\n")
    assert "Stepped up" in out.stdout
    codes = server.json("auth", "factors", "recovery-codes")
    assert isinstance(codes, dict) and len(codes["codes"]) == 10
    server.cli("orgs", "policy", "set", "acme", "require_mfa=any", "step_up_minutes=10")
    policy = server.json("orgs", "policy", "show", "acme")
    assert isinstance(policy, dict)
    assert policy["require_mfa"] == "any" and policy["step_up_minutes"] == 10
    bad = server.cli("orgs", "policy", "set", "acme", "require_mfa=sms", check=False)
    assert bad.returncode != 0 and "require_mfa" in bad.stderr
    # The same code again, within its window: refused.
    again = server.cli("auth", "step-up", "--totp", "--code", later, check=False)
    assert again.returncode != 0 and "already used" in again.stderr
    server.cli("auth", "step-up", "--recovery", "--code", codes["codes"][0])
    reused = server.cli("auth", "step-up", "--recovery", "--code", codes["codes"][0], check=False)
    assert reused.returncode != 0
    server.cli("auth", "factors", "remove", fid, "--yes")
    listed = server.json("auth", "factors", "list")
    assert isinstance(listed, dict) and listed["factors"] == []
    assert listed["recovery_codes_left"] == 9


def test_signing_in_in_the_browser_asks_for_the_security_key(server: Server, browser: Any) -> None:
    from oidc_provider_mock import run_server_in_thread

    login(server)
    with run_server_in_thread(require_nonce=True) as idp:
        issuer = f"http://localhost:{idp.server_port}"
        httpx.put(
            f"{issuer}/users/bob", json={"email": "bob@example.com", "email_verified": True}
        ).raise_for_status()
        server.cli(
            "idps", "add", "corp", "--issuer", issuer, "--client-id", "hangar",
            "--client-secret-file", "-", stdin="s3\n",
        )  # fmt: skip
        server.cli("orgs", "members", "add", "acme", "bob@example.com")
        page, _, _ = _page_with_key(browser)

        def sign_in() -> None:
            page.goto(f"{server.api}/web/signin?idp=corp")
            page.fill('input[name="sub"]', "bob")
            page.click('button[type="submit"]')

        # bob's first sign-in: no factor yet, so nothing is asked.
        sign_in()
        try:
            page.wait_for_url(f"{server.api}/web/", timeout=15_000)
        except Exception:
            raise AssertionError(page.url + "\n" + page.content()[:3000]) from None
        assert "bob@example.com" in page.content()
        session = next(
            c["value"] for c in page.context.cookies() if c["name"] == "__Host-hangar-session"
        )
        bob = httpx.Client(
            base_url=server.api,
            headers={"Authorization": f"Bearer {session}"},
            verify=ssl.create_default_context(cafile=str(server.data_dir / "ca.crt")),
        )
        with bob:
            link = bob.post("/v1/me/factors/webauthn/link").json()["url"]
            page.goto(link)
            page.click("#enrol-button")
            page.wait_for_selector("#status.done", timeout=30_000)
            assert bob.get("/v1/me/step-up").json()["verified_at"] is None

        # Signing in again: the identity provider is not enough any more.
        page.context.clear_cookies()
        sign_in()
        page.wait_for_url(f"{server.api}/web/signin/second-factor")
        assert page.locator("#challenge-button").count() == 1
        page.click("#challenge-button")
        try:
            page.wait_for_url(f"{server.api}/web/", timeout=20_000)
        except Exception:
            raise AssertionError(page.url + "\n" + page.content()[:3000]) from None
        fresh = next(
            c["value"] for c in page.context.cookies() if c["name"] == "__Host-hangar-session"
        )
        assert fresh != session
        with httpx.Client(
            base_url=server.api,
            headers={"Authorization": f"Bearer {fresh}"},
            verify=ssl.create_default_context(cafile=str(server.data_dir / "ca.crt")),
        ) as again:
            # The session carries its sign-in's second factor.
            assert again.get("/v1/me/step-up").json()["verified_at"] is not None
