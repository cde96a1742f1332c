"""A person signs in, and approves a device, in a real browser (Debian's chromium).

The API is served over its own TLS by uvicorn, as `hangar server run` serves
it; the identity provider is oidc-provider-mock on loopback; chromium is
driven by Playwright (the system's chromium: browsers are not downloaded).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.e2e.conftest import Served

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed"),
]


def test_sign_in_and_approve_a_device_in_chromium(
    served: Served,
) -> None:
    from playwright.sync_api import sync_playwright

    public, ca, _, _ = served
    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # The API's certificate is from the installation's own CA, which this
        # throwaway browser profile does not hold.
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto(f"{public}/web/signin")
        page.get_by_role("link", name="Sign in with corp").click()
        page.locator("input[name=sub]").fill("bob")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{public}/web/")
        assert "bob@example.com" in page.content()
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["__Host-hangar-session"]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"

        # A headless host asks for a device code; the person approves it here.
        with httpx.Client(base_url=public, verify=ca) as cli:
            start = cli.post("/v1/auth/device").json()
            page.goto(start["verification_uri_complete"])
            assert start["user_code"] in page.content()
            page.get_by_role("button", name="Approve").click()
            page.wait_for_selector("text=The device is signed in")
            got = cli.post("/v1/auth/device/token", json={"device_code": start["device_code"]})
            assert got.status_code == 200, got.text
            me = cli.get("/v1/whoami", headers={"Authorization": f"Bearer {got.json()['token']}"})
            assert me.json()["email"] == "bob@example.com"

        # Another site's page posts the sign-out form on the person's behalf: refused,
        # and the session lives on.
        with _attacker_site(f"{public}/web/signout") as evil:
            attack = context.new_page()
            with attack.expect_response(f"{public}/web/signout") as posted:
                attack.goto(evil)
            assert posted.value.status == 403
            attack.close()
        with httpx.Client(base_url=public, verify=ca) as cli:
            alive = cli.get("/v1/whoami", headers={"Authorization": f"Bearer {session['value']}"})
            assert alive.status_code == 200

        page.get_by_role("link", name="Hangar").click()
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{public}/web/signin")
        with httpx.Client(base_url=public, verify=ca) as cli:
            gone = cli.get("/v1/whoami", headers={"Authorization": f"Bearer {session['value']}"})
            assert gone.status_code == 401
        browser.close()
    assert violations == []


@contextmanager
def _attacker_site(target: str) -> Iterator[str]:
    """A page on another origin that submits a form to ``target`` as soon as it loads."""
    body = (
        f'<form method=post action="{target}"><input name=csrf value=guessed></form>'
        "<script>document.forms[0].submit()</script>"
    ).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
