"""Signing in from the CLI (loopback code exchange, device codes) and one's own sessions."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hangar.api.guard import PUBLIC, Access, GuardedRouter, control_plane, requires
from hangar.auth.rbac import Permission
from hangar.controlplane import devicecodes, idps, signins
from hangar.errors import AuthError, ValidationError

router = GuardedRouter(prefix="/v1/auth", tags=["auth"])


class IdpName(BaseModel):
    name: str


class CliExchange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=16, max_length=128)
    code_verifier: str = Field(min_length=43, max_length=128)


class SessionIssued(BaseModel):
    token: str = Field(description="the session's token; shown only in this response")
    session_id: str
    expires_at: dt.datetime
    idle_timeout_s: int


class DeviceAuthorization(BaseModel):
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class SessionOut(BaseModel):
    id: str
    idp: str
    via: str
    created_at: dt.datetime
    expires_at: dt.datetime
    last_seen_at: dt.datetime
    idle_timeout_s: int
    client_addr: str | None
    current: bool
    mfa_verified_at: dt.datetime | None


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


@router.get("/idps", dependencies=[PUBLIC], response_model=list[IdpName], summary="Sign-in choices")
def list_idps(request: Request) -> list[IdpName]:
    """The identity providers people may sign in through (names only)."""
    return [IdpName(name=row.name) for row in idps.list_idps(control_plane(request))]


@router.post("/cli/token", dependencies=[PUBLIC], response_model=SessionIssued)
def cli_token(body: CliExchange, request: Request) -> SessionIssued:
    """The CLI trades the one-time code its loopback redirect got, with its PKCE verifier."""
    issued = signins.exchange_cli_code(
        control_plane(request),
        code=body.code,
        code_verifier=body.code_verifier,
        client_addr=_client(request),
        request_id=_rid(request),
    )
    return SessionIssued(
        token=issued.token,
        session_id=issued.row.id,
        expires_at=issued.row.expires_at,
        idle_timeout_s=issued.row.idle_timeout_s,
    )


@router.post("/device", dependencies=[PUBLIC], response_model=DeviceAuthorization)
def device_start(request: Request) -> DeviceAuthorization:
    """A device authorization request (RFC 8628): show the user code, then poll."""
    cp = control_plane(request)
    started = devicecodes.start_device(cp, _client(request))
    uri = cp.settings.effective_public_url + "/web/device"
    return DeviceAuthorization(
        device_code=started.device_code,
        user_code=started.user_code,
        verification_uri=uri,
        verification_uri_complete=f"{uri}?code={started.user_code}",
        expires_in=started.expires_in,
        interval=started.interval,
    )


class DevicePoll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grant_type: str = "urn:ietf:params:oauth:grant-type:device_code"
    device_code: str = Field(min_length=16, max_length=128)


class DeviceTokenError(BaseModel):
    """RFC 8628 section 3.5: why there is no session yet."""

    error: str = Field(description="authorization_pending, slow_down, expired_token, ...")
    error_description: str


@router.post(
    "/device/token",
    dependencies=[PUBLIC],
    response_model=SessionIssued,
    responses={400: {"model": DeviceTokenError, "description": "No session yet (RFC 8628)"}},
)
def device_token(body: DevicePoll, request: Request) -> Any:
    """Poll for the device's session; RFC 8628 errors (authorization_pending, ...) until then."""
    if body.grant_type != "urn:ietf:params:oauth:grant-type:device_code":
        raise ValidationError("grant_type must be urn:ietf:params:oauth:grant-type:device_code")
    try:
        issued = devicecodes.poll_device(
            control_plane(request), body.device_code, _client(request), _rid(request)
        )
    except devicecodes.DevicePending as exc:
        return JSONResponse(
            {"error": exc.error, "error_description": exc.message},
            status_code=400,
            headers={"Cache-Control": "no-store"},
        )
    return SessionIssued(
        token=issued.token,
        session_id=issued.row.id,
        expires_at=issued.row.expires_at,
        idle_timeout_s=issued.row.idle_timeout_s,
    )


@router.get("/sessions", response_model=list[SessionOut], summary="Your sign-in sessions")
def list_sessions(
    access: Annotated[Access, requires(Permission.SESSIONS_READ)],
) -> list[SessionOut]:
    rows = access.cp.sessions.list_for(access.principal.user_id)
    return [
        SessionOut(
            id=r.id,
            idp=r.idp,
            via=r.via,
            created_at=r.created_at,
            expires_at=r.expires_at,
            last_seen_at=r.last_seen_at,
            idle_timeout_s=r.idle_timeout_s,
            client_addr=r.client_addr,
            current=r.id == access.principal.session_id,
            mfa_verified_at=r.mfa_verified_at,
        )
        for r in rows
    ]


@router.delete("/sessions/{session_id}", status_code=204, summary="End one of your sessions")
def revoke_session(
    session_id: str, access: Annotated[Access, requires(Permission.SESSIONS_REVOKE)]
) -> None:
    signins.end_session(access.cp, access.ctx, access.principal.user_id, session_id[:32])


@router.delete("/session", status_code=204, summary="Sign out (end this session)")
def logout(access: Annotated[Access, requires(Permission.SESSIONS_REVOKE)]) -> None:
    if access.principal.session_id is None:
        raise AuthError(
            "this is an API token, not a sign-in session",
            hint="revoke a token with `hangar tokens revoke`",
        )
    signins.end_session(
        access.cp, access.ctx, access.principal.user_id, access.principal.session_id
    )
