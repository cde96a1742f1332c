"""The pure rules of signing in: backoff, policies, redirects, session caveats."""

from __future__ import annotations

import pytest

from hangar.auth.policy import IdentityPolicy, parse_assignments
from hangar.auth.ratelimit import FailureLimiter
from hangar.auth.rbac import Role
from hangar.auth.tokens import parse_caveats
from hangar.controlplane.devicecodes import normalize_user_code
from hangar.controlplane.signins import check_loopback_redirect, safe_next
from hangar.errors import AuthError, TooManyRequests, ValidationError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_after_the_free_failures_and_a_success_clears_it() -> None:
    clock = Clock()
    limiter = FailureLimiter(free=3, base=2.0, cap=60.0, clock=clock)
    for _ in range(3):
        limiter.check(["addr:a"])
        limiter.failed(["addr:a"])
    with pytest.raises(TooManyRequests) as exc:
        limiter.check(["addr:a"])
    assert exc.value.retry_after == 2
    clock.now += 2.1
    limiter.check(["addr:a"])
    limiter.failed(["addr:a"])
    assert limiter.wait_for("addr:a") == pytest.approx(4.0)
    for _ in range(20):
        limiter.failed(["addr:a"])
    assert limiter.wait_for("addr:a") <= 60.0
    limiter.check(["addr:b"])  # another key is not held back
    limiter.succeeded(["addr:a"])
    limiter.check(["addr:a"])


def test_the_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(max_keys=100)
    for n in range(10_000):
        limiter.failed([f"addr:{n}"])
    assert len(limiter) == 100


def test_policy_keys_and_values_are_checked() -> None:
    policy = parse_assignments(
        IdentityPolicy(),
        {
            "sso_idp": "corp",
            "email_domains": ["Example.COM"],
            "group_roles": {"eng": "admin"},
            "idle_timeout": 900,
        },
        unset=[],
    )
    assert policy.email_domains == ["example.com"]
    assert policy.allows_email("bob@example.com") and not policy.allows_email("bob@evil.com")
    assert policy.role_for_groups(["x", "eng"]) is Role.ADMIN
    for bad in (
        {"no_such_key": 1},
        {"idle_timeout": 10},
        {"session_lifetime": 10**9},
        {"group_roles": {"eng": "owner"}},
        {"email_domains": ["not a domain"]},
        {"sso_idp": "Bad Name"},
        {"group_roles": {"eng": "member"}},
    ):
        with pytest.raises(ValidationError):
            parse_assignments(IdentityPolicy(), bad, unset=[])
    assert parse_assignments(policy, {}, unset=["group_roles"]).group_roles == {}
    with pytest.raises(ValidationError, match="group_roles needs sso_idp"):
        parse_assignments(policy, {}, unset=["sso_idp"])


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example:5000/callback",
        "https://127.0.0.1:5000/callback",
        "http://127.0.0.1:80/callback",
        "http://127.0.0.1:5000/callback?x=1",
        "http://127.0.0.2:5000/callback",
        "http://user@127.0.0.1:5000/callback",
    ],
)
def test_only_a_loopback_callback_is_a_cli_redirect(uri: str) -> None:
    with pytest.raises(ValidationError):
        check_loopback_redirect(uri)


def test_loopback_callbacks_are_accepted() -> None:
    for uri in ("http://127.0.0.1:5000/callback", "http://[::1]:5000/callback"):
        assert check_loopback_redirect(uri) == uri


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/web/device?code=ABCD-EFGH", "/web/device?code=ABCD-EFGH"),
        ("https://evil.example/", "/web/"),
        ("//evil.example/web/", "/web/"),
        ("/web//evil.example", "/web/"),
        ("/v1/whoami", "/web/"),
        ("/web/\\evil", "/web/"),
        ("", "/web/"),
    ],
)
def test_after_sign_in_only_hangar_pages(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_user_codes_are_read_leniently() -> None:
    assert normalize_user_code("bcdf ghjk") == "BCDF-GHJK"
    assert normalize_user_code("BCDF-GHJK") == "BCDF-GHJK"


def test_a_session_caveat_names_one_session() -> None:
    assert parse_caveats(("session = ses_1",)).session == "ses_1"
    assert parse_caveats(("session = ses_1", "session = ses_1")).session == "ses_1"
    with pytest.raises(AuthError):
        parse_caveats(("session = ses_1", "session = ses_2"))
    with pytest.raises(AuthError):
        parse_caveats(("session = ses_1,ses_2",))


@pytest.mark.parametrize(
    "url",
    [
        "http://sso.example",
        "ftp://sso.example",
        "https://sso.example/?x=1",
        "https://user:pw@sso.example",
        "https://sso.example/#frag",
    ],
)
def test_an_issuer_is_https_or_loopback(url: str) -> None:
    from hangar.auth.oidc import check_issuer_url

    with pytest.raises(ValidationError):
        check_issuer_url(url)


def test_loopback_issuers_may_be_http() -> None:
    from hangar.auth.oidc import check_issuer_url

    for url in ("http://localhost:8080", "http://127.0.0.1:9000/realms/x", "https://sso.example"):
        assert check_issuer_url(url) == url
