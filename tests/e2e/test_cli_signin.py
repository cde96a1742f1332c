"""`hangar auth login` against a served API and a real provider: loopback and device code.

The person's browser is played by an HTTP client (the CLI's `webbrowser.open`
hands it the URL); the API (over TLS), the identity provider, and the CLI's
loopback listener are the real ones.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from hangar.cli import auth as cli_auth
from hangar.cli.main import run
from hangar.store.tables import DeviceCode
from tests.e2e.conftest import Served
from tests.integration.test_signin import cli_link

pytestmark = pytest.mark.slow


def _provider_login(url: str, sub: str) -> str:
    """At the provider: sign in as ``sub``; where it sends the browser back."""
    parts = urlsplit(url)
    back = httpx.post(
        f"{parts.scheme}://{parts.netloc}{parts.path}?{parts.query}",
        data={"sub": sub},
        follow_redirects=False,
    )
    assert back.status_code in (302, 303), back.text[:300]
    return back.headers["location"]


def _browser(ca: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(verify=ca, follow_redirects=False, timeout=10)


def _through_steps(browser: httpx.Client, public: str, done: httpx.Response) -> httpx.Response:
    """The sign-in's second-factor step (bob has no factor: it sends him straight on)."""
    if done.headers.get("location") == "/web/signin/second-factor":
        return browser.get(f"{public}/web/signin/second-factor")
    return done


def test_login_through_the_browser_and_loopback(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    public, ca, _, cp = served

    def open_browser(url: str) -> bool:
        with _browser(ca) as browser:
            to_idp = browser.get(url)
            assert to_idp.status_code == 302, to_idp.text[:300]
            back = _through_steps(
                browser, public, browser.get(_provider_login(to_idp.headers["location"], "bob"))
            )
            # The person confirms they started the command-line sign-in.
            loopback = cli_link(back)
            assert loopback.startswith("http://127.0.0.1:")
            assert httpx.get(loopback).status_code == 200
        return True

    monkeypatch.setattr(cli_auth.webbrowser, "open", open_browser)
    ca_file = str(cp.settings.data_dir / "ca.crt")
    assert run(["auth", "login", "--api", public, "--ca-cert", ca_file]) == 0
    out = capsys.readouterr().out
    assert "as bob@example.com" in out
    assert run(["auth", "whoami"]) == 0
    assert "session ses_" in capsys.readouterr().out
    assert run(["auth", "sessions", "list", "--json"]) == 0
    assert '"current": true' in capsys.readouterr().out
    assert run(["auth", "logout"]) == 0
    assert "the session has ended" in capsys.readouterr().out


def test_login_with_a_device_code(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    public, ca, _, cp = served
    ca_file = str(cp.settings.data_dir / "ca.crt")
    result: list[int] = []
    cli = threading.Thread(
        target=lambda: result.append(
            run(["auth", "login", "--device", "--api", public, "--ca-cert", ca_file])
        )
    )
    cli.start()
    code = None
    deadline = time.monotonic() + 30
    while code is None and time.monotonic() < deadline:
        with cp.db.read() as session:
            code = session.execute(select(DeviceCode.user_code)).scalar_one_or_none()
        time.sleep(0.1)
    assert code is not None
    with _browser(ca) as browser:
        to_idp = browser.get(f"{public}/web/signin", params={"idp": "corp"})
        back = _provider_login(to_idp.headers["location"], "bob")
        assert _through_steps(browser, public, browser.get(back)).status_code == 200
        form = browser.get(f"{public}/web/device", params={"code": code})
        assert code in form.text
        approved = browser.post(
            f"{public}/web/device",
            data={
                "code": code,
                "decision": "approve",
                "csrf": browser.cookies["__Host-hangar-csrf"],
            },
            headers={"Origin": public},
        )
        assert approved.status_code == 200, approved.text
    cli.join(timeout=60)
    assert result == [0]
    assert "as bob@example.com" in capsys.readouterr().out


def test_operator_and_admin_commands(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    public, _, headers, cp = served
    ca_file = str(cp.settings.data_dir / "ca.crt")
    token = headers["Authorization"].removeprefix("Bearer ")
    assert run(["auth", "login", "--api", public, "--ca-cert", ca_file, "--token", token]) == 0
    secret = tmp_path / "secret"
    secret.write_text("kc-secret\n")
    assert (
        run(
            [
                "idps",
                "add",
                "kc",
                "--issuer",
                "https://sso.example/realms/r",
                "--client-id",
                "hangar",
                "--client-secret-file",
                str(secret),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert run(["idps", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert '"kc"' in listed and '"set"' in listed and "kc-secret" not in listed
    assert (
        run(["orgs", "policy", "set", "acme", "idle_timeout=15m", "email_domains=example.com"]) == 0
    )
    capsys.readouterr()
    assert run(["orgs", "policy", "show", "acme", "--json"]) == 0
    shown = capsys.readouterr().out
    assert '"idle_timeout": 900' in shown and '"example.com"' in shown
    assert run(["orgs", "policy", "set", "acme", "idle_timeout=1s"]) == 1
    assert "idle_timeout" in capsys.readouterr().err
    assert run(["orgs", "policy", "set", "acme", "no_such=1"]) == 1
    assert "not an identity policy key" in capsys.readouterr().err
    assert run(["users", "disable", "bob@example.com", "--yes", "--json"]) == 0
    assert '"sessions_ended": 0' in capsys.readouterr().out
    assert run(["users", "enable", "bob@example.com"]) == 0
    assert run(["idps", "remove", "kc", "--yes"]) == 0
