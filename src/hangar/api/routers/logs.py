"""An app's machines' output, streamed as NDJSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.logs import LogSource, log_sources
from hangar.errors import NotFound

router = GuardedRouter(prefix="/v1/apps/{app}", tags=["machines"])


@router.get(
    "/logs",
    response_class=StreamingResponse,
    summary="Machines' output as NDJSON, oldest first; follow=true keeps streaming",
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON lines"}},
)
async def logs(
    app: str,
    request: Request,
    access: Annotated[Access, requires(Permission.LOGS_READ)],
    machine: Annotated[str | None, Query(max_length=32)] = None,
    follow: bool = False,
) -> StreamingResponse:
    assert access.app is not None
    sources = log_sources(access.cp, access.app, machine)

    async def stream() -> AsyncIterator[bytes]:
        sent: dict[str, int] = {}
        while True:
            for source in sources:
                for line in _new_lines(source, app, sent):
                    yield line
            if not follow or await request.is_disconnected():
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


def _new_lines(source: LogSource, app: str, sent: dict[str, int]) -> list[bytes]:
    """The source's records not yet sent, as NDJSON lines; ``sent`` counts them."""
    try:
        records = source.read()
    except NotFound:
        return []
    start = sent.get(source.machine_id, 0)
    if start > len(records):  # rotated away under us: start over
        start = 0
    sent[source.machine_id] = len(records)
    return [
        (
            json.dumps(
                {
                    "ts": record["ts"],
                    "machine": source.machine_id,
                    "app": app,
                    "region": source.region,
                    "stream": record["stream"],
                    "line": record["line"],
                }
            )
            + "\n"
        ).encode()
        for record in records[start:]
    ]
