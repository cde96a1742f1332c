"""Signing in from the CLI (loopback code exchange, device codes) and one's own sessions."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

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


_DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_MAX_POLL_BYTES = 1024


class DevicePoll(BaseModel):
    """RFC 8628 section 3.4, as a form (the RFC) or as JSON."""

    model_config = ConfigDict(extra="forbid")
    grant_type: str = _DEVICE_GRANT
    device_code: str = Field(min_length=16, max_length=128)
    client_id: str | None = Field(default=None, max_length=128)


class DeviceTokenError(BaseModel):
    """RFC 8628 section 3.5: why there is no session yet."""

    error: str = Field(description="authorization_pending, slow_down, expired_token, ...")
    error_description: str


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


async def _poll_fields(request: Request) -> dict[str, Any]:
    """The poll's fields from an URL-encoded form (RFC 8628) or a JSON object."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    body = await request.body()
    if len(body) > _MAX_POLL_BYTES:
        raise ValidationError("the request is too large")
    try:
        if kind == "application/x-www-form-urlencoded":
            fields: dict[str, Any] = {}
            for key, value in parse_qsl(
                body.decode("ascii"), max_num_fields=8, strict_parsing=True
            ):
                if key in fields:
                    raise ValidationError(f"{key} is given twice")
                fields[key] = value
            return fields
        if kind == "application/json":
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                return parsed
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationError("the request body is malformed") from exc
    raise ValidationError(
        "expected a form (application/x-www-form-urlencoded) or a JSON object",
        hint="send grant_type and device_code as RFC 8628 section 3.4 describes",
    )


@router.post(
    "/device/token",
    dependencies=[PUBLIC],
    response_model=SessionIssued,
    responses={400: {"model": DeviceTokenError, "description": "No session yet (RFC 8628)"}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": DevicePoll.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                },
                "application/json": {
                    "schema": DevicePoll.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                },
            },
            "required": True,
        }
    },
)
async def device_token(request: Request) -> Any:
    """Poll for the device's session; RFC 8628 errors (authorization_pending, ...) until then."""
    try:
        fields = await _poll_fields(request)
    except ValidationError as exc:
        return _oauth_error("invalid_request", exc.message)
    if fields.get("grant_type", _DEVICE_GRANT) != _DEVICE_GRANT:
        return _oauth_error("unsupported_grant_type", f"grant_type must be {_DEVICE_GRANT}")
    try:
        body = DevicePoll.model_validate(fields)
    except PydanticValidationError as exc:
        where = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        return _oauth_error("invalid_request", f"invalid or missing: {where}")
    try:
        issued = await run_in_threadpool(
            devicecodes.poll_device,
            control_plane(request),
            body.device_code,
            _client(request),
            _rid(request),
        )
    except devicecodes.DevicePending as exc:
        return _oauth_error(exc.error, exc.message)
    out = SessionIssued(
        token=issued.token,
        session_id=issued.row.id,
        expires_at=issued.row.expires_at,
        idle_timeout_s=issued.row.idle_timeout_s,
    )
    return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


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
