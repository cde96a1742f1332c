"""What sign-in sessions cost: verifying a session on each call, and signing in.

Per call: the same authenticated request (``GET /v1/whoami``, in process
over ASGI, so the network does not blur the figure) with an API token, as
every call is verified today, and with a sign-in session's token, which
also checks the session's expiry, idle timeout and revocation (and moves
``last_seen_at`` forward now and then). Rounds alternate token and session;
the median of each and their ratio are printed. Also the authentication
step alone (``TokenService.authenticate`` plus ``SessionService.seen``).

Sign-in: a real OpenID provider (oidc-provider-mock, on loopback) and the
whole browser sign-in (Hangar's redirect, the provider's form, the
callback's code exchange and ID-token checks), up to the first authorized
call with the session; p50 and p90 in milliseconds.

Usage: python benchmarks/identity.py [--calls 2000] [--rounds 5] [--signins 30] [--quick]
Target: session / token <= 1.2 per call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_app
from hangar.config.settings import ServerSettings
from hangar.controlplane.bootstrap import init_server
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import User

PUBLIC = "https://testserver"


def per_second(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--signins", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that it runs")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds, args.signins = 100, 2, 3
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from oidc_provider_mock import run_server_in_thread

    with tempfile.TemporaryDirectory(prefix="hangar-bench-identity-") as tmp:
        settings = ServerSettings(data_dir=Path(tmp) / "data", public_url=PUBLIC)
        init_server(settings, org_name="acme", admin_email="admin@example.com", token_ttl=None)
        cp = ControlPlane.open(settings)
        admin_token = _admin_token(cp)
        with run_server_in_thread() as provider:
            issuer = f"http://localhost:{provider.server_port}"
            with TestClient(create_app(cp), base_url=PUBLIC) as api:
                admin = {"Authorization": f"Bearer {admin_token}"}
                api.post(
                    "/v1/idps",
                    headers=admin,
                    json={
                        "name": "corp",
                        "issuer": issuer,
                        "client_id": "bench",
                        "client_secret": "bench-secret",
                    },
                ).raise_for_status()
                api.post("/v1/orgs/acme/members", headers=admin, json={"email": "bob@example.com"})
                httpx.put(f"{issuer}/users/bob", json={"email": "bob@example.com"})
                timings = [_sign_in(api, issuer) for _ in range(args.signins)]
                session_token = api.cookies.get("__Host-hangar-session") or ""
                api_token = api.post(
                    "/v1/tokens",
                    headers={"Authorization": f"Bearer {session_token}"},
                    json={"kind": "user"},
                ).json()["token"]
                api.cookies.clear()
                _calls(api, cp, api_token, session_token, args.calls, args.rounds, timings)
        cp.close()


def _admin_token(cp: ControlPlane) -> str:
    # Not the bootstrap token: each of its uses is a break-glass event.
    with cp.db.write() as session:
        user = session.execute(select(User).where(User.email == "admin@example.com")).scalar_one()
        _, token = cp.tokens.mint(
            session, user_id=user.id, kind="user", org_id=None, ttl=dt.timedelta(hours=1)
        )
    return token


def _sign_in(api: TestClient, issuer: str) -> float:
    api.cookies.clear()
    start = time.perf_counter()
    first = api.get("/web/signin", params={"idp": "corp"}, follow_redirects=False)
    parts = urlsplit(first.headers["location"])
    back = httpx.post(
        f"{issuer}{parts.path}?{parts.query}", data={"sub": "bob"}, follow_redirects=False
    ).headers["location"]
    done = api.get(back.removeprefix(PUBLIC), follow_redirects=False)
    if done.headers.get("location") == "/web/signin/second-factor":
        # The second-factor step's page (bob has no factor: it passes him on).
        api.get("/web/signin/second-factor", follow_redirects=False)
    token = api.cookies.get("__Host-hangar-session") or ""
    ok = api.get("/v1/orgs", headers={"Authorization": f"Bearer {token}"})
    ok.raise_for_status()
    return (time.perf_counter() - start) * 1000


def _calls(
    api: TestClient,
    cp: ControlPlane,
    api_token: str,
    session_token: str,
    calls: int,
    rounds: int,
    signins: list[float],
) -> None:
    def whoami(token: str) -> Callable[[], object]:
        headers = {"Authorization": f"Bearer {token}"}
        return lambda: api.get("/v1/whoami", headers=headers)

    def auth(token: str) -> Callable[[], object]:
        def run() -> None:
            with cp.db.connect() as conn:
                principal = cp.tokens.authenticate(conn, token)
            cp.sessions.seen(principal)

        return run

    results: dict[str, list[float]] = {k: [] for k in ("ht", "hs", "at", "as")}
    for _ in range(rounds):
        results["ht"].append(per_second(whoami(api_token), calls))
        results["hs"].append(per_second(whoami(session_token), calls))
        results["at"].append(per_second(auth(api_token), calls * 5))
        results["as"].append(per_second(auth(session_token), calls * 5))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{'':28}{'API token':>12}{'session':>12}{'ratio':>8}  target")
    for label, t, s in (
        ("GET /v1/whoami", med["ht"], med["hs"]),
        ("authenticate", med["at"], med["as"]),
    ):
        print(f"{label:28}{t:>10.0f}/s{s:>10.0f}/s{t / s:>8.2f}  <= 1.2")
    p50 = statistics.median(signins)
    p90 = sorted(signins)[max(0, int(len(signins) * 0.9) - 1)]
    print(f"{'sign-in to first call':28}{'p50':>12}{'p90':>12}")
    print(f"{'':28}{p50:>10.1f}ms{p90:>10.1f}ms")


if __name__ == "__main__":
    main()
