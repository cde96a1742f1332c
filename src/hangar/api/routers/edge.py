"""The edge: ACME's HTTP-01 answers (public), and what this host's edge serves."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from hangar.api.guard import PUBLIC, Access, GuardedRouter, control_plane, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.certs import challenge_answer
from hangar.domain.routing import ACME_CHALLENGE_PREFIX

router = GuardedRouter(tags=["edge"])


@router.get(
    ACME_CHALLENGE_PREFIX + "{token}",
    response_class=PlainTextResponse,
    summary="An HTTP-01 answer, for the ACME server (via the edge)",
)
def acme_challenge(token: str, request: Request, _: Annotated[None, PUBLIC]) -> str:
    host = request.headers.get("host", "").split(":")[0].lower()
    return challenge_answer(control_plane(request), token, host)


class EdgeOut(BaseModel):
    local: bool = Field(description="whether this API's host runs an edge")
    running: bool
    error: str
    quarantined: dict[str, str] = Field(
        default_factory=dict,
        description="parts left out of the edge (http:APP, tcp:APP:PORT, cert:NAME) and why",
    )
    routes: list[dict[str, Any]]
    tcp: list[dict[str, Any]]
    proxies: list[dict[str, Any]]


@router.get(
    "/v1/edge",
    response_model=EdgeOut,
    summary="Routes, backends and their health at this host's edge (operators)",
)
def edge_status(access: Annotated[Access, requires(Permission.EDGE_READ)]) -> EdgeOut:
    access.check(access.perm, org=None, shown="the edge")
    local = access.cp.local.edge() if access.cp.local is not None else None
    if local is None:
        return EdgeOut(local=False, running=False, error="", routes=[], tcp=[], proxies=[])
    table, status = local
    return EdgeOut(
        local=True,
        running=bool(status["running"]),
        error=str(status.get("error") or ""),
        quarantined=dict(status.get("quarantined") or {}),
        routes=[
            {
                "app": r.app,
                "hostnames": list(r.hostnames),
                "force_https": r.force_https,
                "hsts": r.hsts,
                "servers": [
                    {"machine": s.name, "address": s.address, "port": s.port, "up": s.up}
                    for s in r.servers
                ],
            }
            for r in table.http
        ],
        tcp=[
            {
                "app": t.app,
                "port": t.port,
                "tls": t.tls,
                "servers": [{"machine": s.name, "up": s.up} for s in t.servers],
            }
            for t in table.tcp
        ],
        proxies=list(status["proxies"]),
    )
