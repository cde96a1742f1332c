"""Liveness (public) and the caller's own identity."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Request
from pydantic import BaseModel

import hangar
from hangar.api.guard import PUBLIC, Access, GuardedRouter, control_plane, requires
from hangar.auth.rbac import Permission, Role

router = GuardedRouter(prefix="/v1", tags=["health"])


class Health(BaseModel):
    status: str
    version: str


class WhoAmI(BaseModel):
    user_id: str
    email: str
    operator: bool
    token_id: str
    roles: dict[str, Role]
    orgs: list[str] | None
    apps: list[str] | None
    actions: list[str]
    expires: int | None
    # The sign-in session this token stands for (None for an API token).
    session_id: str | None = None
    mfa_verified_at: dt.datetime | None = None


@router.get("/healthz", response_model=Health, summary="Is the API up")
def healthz(_: Annotated[None, PUBLIC]) -> Health:
    return Health(status="ok", version=hangar.__version__)


class CaOut(BaseModel):
    certificate: str
    fingerprint: str


@router.get("/ca", response_model=CaOut, summary="The installation's CA certificate (public)")
def ca(request: Request, _: Annotated[None, PUBLIC]) -> CaOut:
    internal = control_plane(request).ca
    return CaOut(certificate=internal.pem(), fingerprint=internal.fingerprint())


@router.get("/whoami", response_model=WhoAmI, summary="Who this token acts for, and its scope")
def whoami(access: Annotated[Access, requires(Permission.WHOAMI)]) -> WhoAmI:
    p, scope = access.principal, access.principal.scope
    return WhoAmI(
        user_id=p.user_id,
        email=p.email,
        operator=p.is_operator,
        token_id=p.token_id,
        roles={k: v for k, v in p.roles.items() if k in p.visible_orgs()},
        orgs=sorted(scope.orgs) if scope.orgs is not None else None,
        apps=sorted(scope.apps) if scope.apps is not None else None,
        actions=sorted(a.value for a in scope.actions),
        expires=scope.expires,
        session_id=p.session_id,
        mfa_verified_at=p.mfa_verified_at,
    )
