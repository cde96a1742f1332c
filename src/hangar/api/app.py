"""The FastAPI application: routers, middleware, problem handlers, lifecycle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import hangar
from hangar.api.guard import assert_routes_guarded
from hangar.api.metrics import MetricsMiddleware
from hangar.api.middleware import RequestContextMiddleware
from hangar.api.problems import PROBLEM_RESPONSES, install_problem_handlers
from hangar.api.routers import (
    agent,
    apps,
    audit,
    backups,
    certs,
    edge,
    execs,
    factors,
    health,
    hosts,
    leases,
    logs,
    logsinks,
    machines,
    metrics,
    orgs,
    releases,
    secrets,
    snapshots,
    system,
    tokens,
    volumes,
    wireguard,
)
from hangar.api.routers import auth as auth_routes
from hangar.api.routers import idps as idp_routes
from hangar.api.routers import users as user_routes
from hangar.api.web import factors as web_factors
from hangar.api.web import pages
from hangar.api.web import signin as signin_pages
from hangar.controlplane.state import ControlPlane

__all__ = ["create_agent_app", "create_app"]

log = logging.getLogger("hangar.api")


def create_app(cp: ControlPlane) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # A signed checkpoint on shutdown makes a later cut of the tail detectable.
        with cp.db.write() as session:
            signed = cp.audit.checkpoint_all(session)
        log.info("signed %d audit checkpoint(s) on shutdown", signed)

    app = FastAPI(
        title="Hangar API",
        version=hangar.__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.cp = cp
    for module in (
        health,
        orgs,
        apps,
        releases,
        machines,
        leases,
        execs,
        logs,
        logsinks,
        backups,
        snapshots,
        secrets,
        volumes,
        certs,
        edge,
        wireguard,
        hosts,
        tokens,
        factors,
        audit,
        system,
    ):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(machines.by_id, responses=PROBLEM_RESPONSES)
    app.include_router(metrics.orgs, responses=PROBLEM_RESPONSES)
    app.include_router(metrics.apps, responses=PROBLEM_RESPONSES)
    app.include_router(factors.users, responses=PROBLEM_RESPONSES)
    app.include_router(web_factors.router)
    for extra in (auth_routes.router, idp_routes.router, user_routes.router):
        app.include_router(extra, responses=PROBLEM_RESPONSES)
    app.include_router(pages.router)
    app.include_router(signin_pages.router)
    install_problem_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=cp.settings.max_body_bytes,
        max_upload_bytes=cp.settings.max_image_upload_bytes,
    )
    if cp.settings.metrics_port:
        app.add_middleware(MetricsMiddleware, listener="api")
    assert_routes_guarded(app)
    return app


def create_agent_app(cp: ControlPlane) -> FastAPI:
    """The agents' API, for the mutual-TLS listener only (no docs, no schema)."""
    app = FastAPI(
        title="Hangar agent API",
        version=hangar.__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.cp = cp
    app.include_router(agent.router, responses=PROBLEM_RESPONSES)
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=cp.settings.max_body_bytes)
    if cp.settings.metrics_port:
        app.add_middleware(MetricsMiddleware, listener="agents")
    assert_routes_guarded(app)
    return app
