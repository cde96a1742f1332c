"""``hangar auth``: sign in (identity provider, device code or token), sessions, sign out."""

from __future__ import annotations

import base64
import hashlib
import html
import http.server
import secrets
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import typer

from hangar.cli import factors
from hangar.cli.client import Client, load_client_settings, save_login
from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit, listing
from hangar.config.settings import ClientSettings, client_config_path
from hangar.errors import AuthError, HangarError, ValidationError, WaitTimeout

app = typer.Typer(
    name="auth",
    help="Sign in to a Hangar API (single sign-on, device code or token); your sessions.",
    no_args_is_help=True,
)
sessions_app = typer.Typer(
    name="sessions", help="Your sign-in sessions: list them, end one.", no_args_is_help=True
)
app.add_typer(sessions_app)
app.add_typer(factors.app)
app.command("step-up")(factors.step_up)

LOGIN_WAIT_SECONDS = 300.0


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Loopback(http.server.HTTPServer):
    """Waits for the one redirect that carries our state back to 127.0.0.1."""

    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.code: str | None = None
        self.error: str | None = None
        self.done = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Loopback

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        state = (query.get("state") or [""])[0]
        if parts.path != "/callback" or not secrets.compare_digest(state, self.server.state):
            self._answer(400, "This is not the sign-in this command is waiting for.")
            return
        code = (query.get("code") or [""])[0]
        if code:
            self.server.code = code
            self._answer(200, "Signed in. You can close this tab and return to the terminal.")
        else:
            self.server.error = (query.get("error") or ["no code"])[0][:200]
            self._answer(400, "The sign-in did not complete; see the terminal.")
        self.server.done.set()

    def _answer(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>Hangar</title><p>{html.escape(text)}</p>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", "default-src 'none'")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _choose_idp(anonymous: Client, idp: str | None) -> str:
    names = [i["name"] for i in anonymous.get("/v1/auth/idps")]
    if idp is not None:
        if idp not in names:
            raise ValidationError(
                f"no identity provider is called {idp!r}",
                hint="choices: " + (", ".join(names) or "none configured"),
            )
        return idp
    if len(names) != 1:
        raise ValidationError(
            "which identity provider?" if names else "no identity provider is configured",
            hint=("pass --idp: " + ", ".join(names))
            if names
            else "an operator adds one with `hangar idps add`, or use --token",
        )
    return str(names[0])


def browser_login(
    settings: ClientSettings, idp: str | None, *, open_browser: bool = True
) -> dict[str, Any]:
    """Sign in through the browser and a loopback redirect; the session the API issued."""
    with Client(settings, need_token=False) as anonymous:
        return _browser_login(anonymous, settings, idp, open_browser=open_browser)


def _browser_login(
    anonymous: Client, settings: ClientSettings, idp: str | None, *, open_browser: bool
) -> dict[str, Any]:
    name = _choose_idp(anonymous, idp)
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(24)
    server = _Loopback(state)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    try:
        url = (
            settings.api_url.rstrip("/")
            + "/web/signin?"
            + urlencode(
                {
                    "idp": name,
                    "cli_redirect": f"http://127.0.0.1:{port}/callback",
                    "cli_challenge": challenge,
                    "cli_state": state,
                }
            )
        )
        opened = open_browser and webbrowser.open(url)
        if not opened:
            typer.echo("Open this URL in a browser to sign in:", err=True)
        else:
            typer.echo("If no browser opened, open this URL to sign in:", err=True)
        typer.echo(f"  {url}", err=True)
        if not server.done.wait(LOGIN_WAIT_SECONDS):
            raise WaitTimeout("no sign-in came back in 5 minutes", hint="run the command again")
    finally:
        server.shutdown()
        server.server_close()
    if server.code is None:
        raise AuthError(f"the sign-in did not complete: {server.error}")
    issued: dict[str, Any] = anonymous.request(
        "POST", "/v1/auth/cli/token", json={"code": server.code, "code_verifier": verifier}
    )
    return issued


def device_login(settings: ClientSettings) -> dict[str, Any]:
    """Sign in with a device code (RFC 8628): someone approves it on Hangar's web page."""
    with Client(settings, need_token=False) as anonymous:
        return _device_login(anonymous)


def _device_login(anonymous: Client) -> dict[str, Any]:
    start = anonymous.request("POST", "/v1/auth/device")
    typer.echo(f"To sign in, open {start['verification_uri']} and enter the code:", err=True)
    typer.echo(f"\n    {start['user_code']}\n", err=True)
    typer.echo(f"(or open {start['verification_uri_complete']})", err=True)
    interval = float(start["interval"])
    deadline = time.monotonic() + float(start["expires_in"])
    while time.monotonic() < deadline:
        time.sleep(interval)
        response = anonymous.raw(
            "POST", "/v1/auth/device/token", json={"device_code": start["device_code"]}
        )
        if response.status_code == 200:
            issued: dict[str, Any] = response.json()
            return issued
        error = response.json().get("error") if response.content else None
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise AuthError("the sign-in was denied on the web page")
        if error == "expired_token":
            raise AuthError("the code expired before it was approved", hint="run the command again")
        raise AuthError(f"the sign-in failed: {error or response.status_code}")
    raise AuthError("the code expired before it was approved", hint="run the command again")


@app.command()
def login(
    ctx: typer.Context,
    token: Annotated[
        str | None, typer.Option(help="an API token instead of signing in; '-' reads stdin")
    ] = None,
    device: Annotated[
        bool,
        typer.Option(
            "--device",
            help="sign in with a code approved in a browser elsewhere (for hosts with no browser)",
        ),
    ] = False,
    idp: Annotated[
        str | None, typer.Option(help="the identity provider (needed when there are several)")
    ] = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="print the sign-in URL instead of opening it")
    ] = False,
    api: Annotated[str | None, typer.Option("--api", help="API URL")] = None,
    ca_cert: Annotated[
        Path | None, typer.Option(help="CA certificate to trust (the server's DATA_DIR/ca.crt)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign in and store the session (mode 0600) for later commands.

    With no option, opens the browser at your identity provider and waits for
    it to come back to this computer (a loopback redirect on 127.0.0.1); the
    result is a session that ends after its lifetime or when idle, and is
    renewed only by signing in again. --device prints a code to approve on
    Hangar's web page from any browser. --token stores an API token instead.
    """
    if token is not None and (device or idp or no_browser):
        raise ValidationError("--token does not go with --device, --idp or --no-browser")
    if token == "-":  # noqa: S105 - "-" means stdin, not a password
        token = sys.stdin.readline().strip()
    if token is not None and not token:
        raise ValidationError("the token is empty")
    root_api = (ctx.find_root().obj or {}).get("client_flags", {}).get("api_url")
    flags: dict[str, Any] = {
        "api_url": api or root_api,
        "ca_cert": ca_cert.resolve() if ca_cert else None,
        "token": None,
    }
    base = load_client_settings(flags)
    if token is None:
        issued = (
            device_login(base) if device else browser_login(base, idp, open_browser=not no_browser)
        )
        token = str(issued["token"])
    settings = load_client_settings({**flags, "token": token})
    with Client(settings) as checked:
        me = checked.get("/v1/whoami")
    path = save_login(settings)
    if json_out:
        emit(
            {
                "api_url": settings.api_url,
                "email": me["email"],
                "token_id": me["token_id"],
                "session_id": me.get("session_id"),
                "saved_to": str(path),
            }
        )
        return
    typer.echo(f"Logged in to {settings.api_url} as {me['email']} (token {me['token_id']}).")
    typer.echo(f"Saved to {path}.")


@app.command()
def whoami(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show who the current token acts for and what it may do."""
    with client(ctx) as api:
        me = api.get("/v1/whoami")
    if json_out:
        emit(me)
        return
    typer.echo(
        f"{me['email']}  token {me['token_id']}"
        + (f"  session {me['session_id']}" if me.get("session_id") else "")
        + ("  (installation operator)" if me["operator"] else "")
    )
    typer.echo(f"  actions: {', '.join(me['actions'])}")
    if me["apps"] is not None:
        typer.echo(f"  apps:    {', '.join(me['apps'])}")


@app.command()
def logout(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """End this sign-in session on the server and forget it here.

    An API token stored with --token is only forgotten (it stays valid:
    revoke it with `hangar tokens revoke`). If the server cannot be reached,
    nothing is forgotten: the session would stay valid with no one holding
    it to end it.
    """
    path = client_config_path()
    if not path.exists():
        if json_out:
            emit({"ended": None, "removed": None})
        else:
            typer.echo("Not logged in.")
        return
    ended: str | None = None
    note = ""
    try:
        with client(ctx) as api:
            if api.get("/v1/whoami").get("session_id"):
                api.request("DELETE", "/v1/auth/session")
                ended, note = "session", "Signed out: the session has ended."
            else:
                ended = "nothing"
                note = "This is an API token: it stays valid (`hangar tokens revoke` ends it)."
    except HangarError as exc:
        if exc.status == 401:
            # The server no longer accepts it (ended, expired): only forget it.
            ended, note = "already", f"The session had already ended ({exc.message})."
        else:
            raise HangarError(
                f"the server did not end the session: {exc.message}",
                hint="run `hangar auth logout` again once it answers; "
                f"the session stays saved in {path} until then",
            ) from exc
    path.unlink()
    if json_out:
        emit({"ended": ended, "removed": str(path)})
        return
    typer.echo(note)
    typer.echo(f"Removed {path}.")


@sessions_app.command("list")
def sessions_list(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Your current sessions: where they came from, when they end."""
    with client(ctx) as api:
        rows = api.get("/v1/auth/sessions")
    for row in rows:
        row["this"] = "*" if row["current"] else ""
    listing(
        rows,
        [
            ("this", ""),
            ("id", "ID"),
            ("via", "VIA"),
            ("idp", "IDP"),
            ("client_addr", "FROM"),
            ("created_at", "STARTED"),
            ("expires_at", "ENDS"),
            ("last_seen_at", "LAST SEEN"),
        ],
        json_out,
    )


@sessions_app.command("revoke")
def sessions_revoke(ctx: typer.Context, session_id: str, yes: YesOpt = False) -> None:
    """End one of your sessions (its tokens stop working at once)."""
    confirm(f"End session {session_id}?", yes)
    with client(ctx) as api:
        api.request("DELETE", f"/v1/auth/sessions/{session_id}")
    typer.echo(f"Ended session {session_id}.")
