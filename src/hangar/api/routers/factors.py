"""``/v1/me/factors``, ``/v1/me/step-up``: one's own second factors, and stepping up."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import factors, mfapolicy, stepups, weblinks
from hangar.domain.names import PlainText

router = GuardedRouter(prefix="/v1/me", tags=["factors"])


class FactorOut(BaseModel):
    id: str
    kind: str
    name: str
    confirmed: bool
    created_at: str
    last_used_at: str | None
    disabled: str | None
    aaguid: str | None
    sign_count: int | None


class FactorsOut(BaseModel):
    factors: list[FactorOut]
    recovery_codes_left: int


class ChallengeOut(BaseModel):
    challenge_id: str
    public_key: dict[str, Any] = Field(serialization_alias="publicKey")


class WebauthnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge_id: str = Field(max_length=32)
    credential: dict[str, Any]
    name: PlainText = Field(default="security key", max_length=64)


class TotpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: PlainText = Field(default="authenticator app", max_length=64)


class TotpOut(BaseModel):
    factor: FactorOut
    secret: str
    uri: str


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(max_length=64)


class CodesOut(BaseModel):
    codes: list[str]


class StepUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["webauthn", "totp", "recovery"]
    code: str | None = Field(default=None, max_length=64)
    challenge_id: str | None = Field(default=None, max_length=32)
    credential: dict[str, Any] | None = None


class StepUpOut(BaseModel):
    verified_at: str | None
    method: str | None = None


class LinkOut(BaseModel):
    url: str
    expires_at: str


def _factor(row: Any) -> FactorOut:
    return FactorOut(**factors.as_json(row))


@router.get("/factors", response_model=FactorsOut, summary="List your second factors")
def list_factors(access: Annotated[Access, requires(Permission.WHOAMI)]) -> FactorsOut:
    found = factors.list_factors(access.cp, access.principal.user_id)
    return FactorsOut(
        factors=[_factor(r) for r in found.factors],
        recovery_codes_left=found.recovery_codes_left,
    )


@router.post(
    "/factors/webauthn/options",
    response_model=ChallengeOut,
    response_model_by_alias=True,
    summary="Start enrolling a security key: options for navigator.credentials.create",
)
def webauthn_options(access: Annotated[Access, requires(Permission.FACTORS_WRITE)]) -> ChallengeOut:
    challenge_id, options = factors.begin_webauthn(access.cp, access.principal)
    return ChallengeOut(challenge_id=challenge_id, public_key=options)


@router.post(
    "/factors/webauthn",
    response_model=FactorOut,
    status_code=201,
    summary="Finish enrolling a security key with the browser's answer",
)
def webauthn_finish(
    body: WebauthnIn, access: Annotated[Access, requires(Permission.FACTORS_WRITE)]
) -> FactorOut:
    row = factors.finish_webauthn(
        access.cp,
        access.ctx,
        access.principal,
        challenge_id=body.challenge_id,
        credential=body.credential,
        name=body.name,
    )
    return _factor(row)


@router.post(
    "/factors/webauthn/link",
    response_model=LinkOut,
    status_code=201,
    summary="A one-time link to the web page that enrols a security key (10 minutes)",
)
def webauthn_link(access: Annotated[Access, requires(Permission.FACTORS_WRITE)]) -> LinkOut:
    url, expires = weblinks.make_link(access.cp, access.principal, page="enrol")
    return LinkOut(url=url, expires_at=expires.isoformat())


@router.post(
    "/step-up/link",
    response_model=LinkOut,
    status_code=201,
    summary="A one-time link to the web page that steps up with a security key (10 minutes)",
)
def step_up_link(access: Annotated[Access, requires(Permission.FACTORS_WRITE)]) -> LinkOut:
    url, expires = weblinks.make_link(access.cp, access.principal, page="step-up")
    return LinkOut(url=url, expires_at=expires.isoformat())


@router.post(
    "/factors/totp",
    response_model=TotpOut,
    status_code=201,
    summary="Start enrolling a TOTP app: its secret (shown once); confirm it with a code",
)
def totp_begin(
    body: TotpIn, access: Annotated[Access, requires(Permission.FACTORS_WRITE)]
) -> TotpOut:
    row, secret, uri = factors.begin_totp(access.cp, access.ctx, access.principal, name=body.name)
    return TotpOut(factor=_factor(row), secret=secret, uri=uri)


@router.post(
    "/factors/totp/{factor_id}/confirm",
    response_model=FactorOut,
    summary="Confirm a TOTP factor with a code from it",
)
def totp_confirm(
    factor_id: str, body: CodeIn, access: Annotated[Access, requires(Permission.FACTORS_WRITE)]
) -> FactorOut:
    row = factors.confirm_totp(
        access.cp, access.ctx, access.principal, factor_id=factor_id, code=body.code
    )
    return _factor(row)


@router.delete("/factors/{factor_id}", status_code=204, summary="Remove one of your factors")
def remove_factor(
    factor_id: str, access: Annotated[Access, requires(Permission.FACTORS_WRITE)]
) -> Response:
    factors.remove_factor(access.cp, access.ctx, access.principal, factor_id)
    return Response(status_code=204)


@router.post(
    "/recovery-codes",
    response_model=CodesOut,
    status_code=201,
    summary="New recovery codes (shown once); the old ones stop working",
)
def recovery_codes(access: Annotated[Access, requires(Permission.FACTORS_WRITE)]) -> CodesOut:
    return CodesOut(codes=factors.make_recovery_codes(access.cp, access.ctx, access.principal))


@router.post(
    "/step-up/options",
    response_model=ChallengeOut,
    response_model_by_alias=True,
    summary="Start a step-up with a security key: options for navigator.credentials.get",
)
def step_up_options(access: Annotated[Access, requires(Permission.FACTORS_WRITE)]) -> ChallengeOut:
    challenge_id, options = stepups.begin_assertion(access.cp, access.principal)
    return ChallengeOut(challenge_id=challenge_id, public_key=options)


@router.post(
    "/step-up",
    response_model=StepUpOut,
    summary="Verify a second factor now: sensitive actions with this credential may follow",
)
def step_up(
    body: StepUpIn, access: Annotated[Access, requires(Permission.FACTORS_WRITE)]
) -> StepUpOut:
    when = stepups.step_up(
        access.cp,
        access.ctx,
        access.principal,
        method=body.method,
        code=body.code,
        challenge_id=body.challenge_id,
        credential=body.credential,
    )
    return StepUpOut(verified_at=when.isoformat(), method=body.method)


@router.get(
    "/step-up",
    response_model=StepUpOut,
    summary="When a second factor was last verified behind this credential",
)
def step_up_status(access: Annotated[Access, requires(Permission.WHOAMI)]) -> StepUpOut:
    when = factors.freshness(access.cp, access.principal)
    return StepUpOut(verified_at=when.isoformat() if when else None)


users = GuardedRouter(prefix="/v1/users", tags=["users"])


class ResetOut(BaseModel):
    factors: int
    recovery_codes: int


@users.delete(
    "/{email}/factors",
    response_model=ResetOut,
    summary="Remove every second factor and recovery code of a person who lost them (operators)",
)
def reset_factors(
    email: str, access: Annotated[Access, requires(Permission.USERS_WRITE)]
) -> ResetOut:
    access.check(access.perm, org=None, shown="users")
    mfapolicy.enforce_step_up(
        access.cp, access.ctx, access.principal, org=None, action="factor.reset"
    )
    return ResetOut(**factors.reset_factors(access.cp, access.ctx, email[:254]))
