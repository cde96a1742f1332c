"""The second-factor policy and the freshness rule (pure), and TOTP's window."""

from __future__ import annotations

import datetime as dt

import pyotp
import pytest

from hangar.auth.factors import (
    FactorRejected,
    new_recovery_codes,
    normalize_recovery_code,
    verify_totp,
)
from hangar.auth.stepup import MfaPolicy, StepUpRequired, require_fresh_factor
from hangar.auth.tokens import Principal, Scope
from hangar.errors import ValidationError

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def _who(verified_at: dt.datetime | None) -> Principal:
    return Principal(
        user_id="usr_1",
        email="a@example.com",
        is_operator=False,
        token_id="tok_1",
        scope=Scope(),
        mfa_verified_at=verified_at,
    )


def test_freshness_is_a_window_that_closes() -> None:
    require_fresh_factor(_who(NOW - dt.timedelta(minutes=14)), 15, now=NOW)
    with pytest.raises(StepUpRequired, match="15 minutes"):
        require_fresh_factor(_who(NOW - dt.timedelta(minutes=16)), 15, now=NOW)
    with pytest.raises(StepUpRequired, match="has none"):
        require_fresh_factor(_who(None), 15, now=NOW)
    # A time from the future (a clock set forward to cheat) is no freshness either.
    with pytest.raises(StepUpRequired):
        require_fresh_factor(_who(NOW + dt.timedelta(hours=1)), 15, now=NOW)


def test_policy_decides_which_factors_count() -> None:
    assert MfaPolicy().satisfied_by(set())
    keys = MfaPolicy(require_mfa="webauthn")
    assert keys.satisfied_by({"webauthn"}) and not keys.satisfied_by({"totp"})
    assert keys.methods() == ["webauthn", "recovery"]
    anything = MfaPolicy(require_mfa="any")
    assert anything.satisfied_by({"totp"}) and not anything.satisfied_by(set())
    no_totp = MfaPolicy(require_mfa="any", allow_totp=False)
    assert not no_totp.satisfied_by({"totp"}) and "totp" not in no_totp.methods()


@pytest.mark.parametrize(
    "change",
    [
        {"require_mfa": "sms"},
        {"require_mfa": None},
        {"step_up_minutes": 0},
        {"step_up_minutes": 721},
        {"step_up_minutes": 1.5},
        {"step_up_minutes": True},
        {"allow_totp": "false"},
        {"accept_idp_mfa": 1},
        {"requir_mfa": "any"},
    ],
)
def test_policy_refuses_what_it_would_not_act_on(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MfaPolicy().with_changes(change)


def test_a_totp_code_counts_once_near_now() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = verify_totp(secret, totp.at(now), last_step=None, now=now)
    assert step == int(now // 30)
    with pytest.raises(FactorRejected, match="already used"):
        verify_totp(secret, totp.at(now), last_step=step, now=now)
    with pytest.raises(FactorRejected, match="already used"):
        verify_totp(secret, totp.at(now - 30), last_step=step, now=now)
    assert verify_totp(secret, totp.at(now + 30), last_step=step, now=now) == step + 1
    with pytest.raises(FactorRejected, match="not valid"):
        verify_totp(secret, totp.at(now + 90), last_step=None, now=now)
    for bad in ("12345", "1234567", "12a456", "١٢٣٤٥٦"):
        with pytest.raises(FactorRejected):
            verify_totp(secret, bad, last_step=None, now=now)


def test_recovery_codes_are_many_distinct_and_read_as_typed() -> None:
    codes = new_recovery_codes()
    assert len(set(codes)) == 10
    code = codes[0]
    assert normalize_recovery_code(code.upper().replace("-", " ")) == code
    with pytest.raises(FactorRejected):
        normalize_recovery_code("not-a-code")
