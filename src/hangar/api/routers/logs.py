"""An app's machines' output, streamed as NDJSON."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.logs import LogFilter, LogSource, log_sources
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
    stream: Annotated[
        Literal["stdout", "stderr", "access"] | None,
        Query(description="only this stream (access: the edge's request lines)"),
    ] = None,
    since: Annotated[
        dt.datetime | None, Query(description="records at or after this time (UTC if no zone)")
    ] = None,
    until: Annotated[
        dt.datetime | None, Query(description="records before this time (UTC if no zone)")
    ] = None,
    match: Annotated[
        str, Query(max_length=256, description="only lines containing this text (case-sensitive)")
    ] = "",
) -> StreamingResponse:
    assert access.app is not None
    wanted = LogFilter(stream=stream, since=since, until=until, match=match)
    sources = log_sources(access.cp, access.app, machine)

    async def lines() -> AsyncIterator[bytes]:
        sent: dict[str, int] = {}
        while True:
            for source in sources:
                for line in _new_lines(source, app, sent, wanted):
                    yield line
            if not follow or await request.is_disconnected():
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _new_lines(source: LogSource, app: str, sent: dict[str, int], wanted: LogFilter) -> list[bytes]:
    """The source's records not yet looked at that ``wanted`` accepts, as NDJSON lines."""
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
        if wanted.accepts(record)
    ]
