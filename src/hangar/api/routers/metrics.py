"""An organization's machines' metrics, for its own members only.

``GET /v1/orgs/{org}/metrics`` is a Prometheus scrape target (text format):
every machine of the organization, labelled ``org``, ``app`` and ``machine``
from the store; ``GET /v1/apps/{app}/metrics`` the same for one app, as
text or (``?format=json``) the key figures `hangar metrics` shows: each
machine's (CPU, memory, processes, network) and the app's at each edge host
(requests by status class, response time).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.appmetrics import app_figures, org_exposition

orgs = GuardedRouter(prefix="/v1/orgs/{org}", tags=["metrics"])
apps = GuardedRouter(prefix="/v1/apps/{app}", tags=["metrics"])

_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}
}


class MachineFiguresOut(BaseModel):
    machine: str
    age_seconds: float | None
    cpu_seconds: float | None
    memory_bytes: float | None
    pids: float | None
    scrape_ok: bool | None
    app_series: int
    rx_bytes: float | None
    tx_bytes: float | None
    rx_packets: float | None
    tx_packets: float | None


class EdgeFiguresOut(BaseModel):
    edge: str = Field(description="the edge host's name")
    age_seconds: float
    requests: float | None
    responses: dict[str, float] = Field(description="responses by status class (1xx..5xx, other)")
    response_time_seconds: float | None = Field(
        description="average response time over the app's last 1024 requests at this edge"
    )
    current_sessions: float | None
    bytes_in: float | None
    bytes_out: float | None


class AppFiguresOut(BaseModel):
    machines: list[MachineFiguresOut]
    edge: list[EdgeFiguresOut]


@orgs.get(
    "/metrics",
    response_class=Response,
    responses=_TEXT,
    summary="The organization's machines' metrics (Prometheus text format)",
)
async def org_metrics(
    org: str, access: Annotated[Access, requires(Permission.APPS_READ)]
) -> Response:
    assert access.org is not None
    org_id = access.org.id

    def readable(app: str) -> bool:
        return access.allows(Permission.APPS_READ, org_id=org_id, app=app)

    body = await run_in_threadpool(org_exposition, access.cp, org_id, None, readable)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@apps.get(
    "/metrics",
    response_model=AppFiguresOut,
    responses=_TEXT,
    summary="One app's metrics: text format, or its key figures (machines, edge) with format=json",
)
async def app_metrics(
    app: str,
    access: Annotated[Access, requires(Permission.APPS_READ)],
    format: Annotated[Literal["prometheus", "json"], Query()] = "prometheus",
) -> Response | AppFiguresOut:
    assert access.org is not None and access.app is not None
    if format == "json":
        figures = await run_in_threadpool(app_figures, access.cp, access.org.id, access.app)
        return AppFiguresOut(
            machines=[MachineFiguresOut(**vars(f)) for f in figures.machines],
            edge=[EdgeFiguresOut(**vars(e)) for e in figures.edge],
        )
    body = await run_in_threadpool(org_exposition, access.cp, access.org.id, access.app.id)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
