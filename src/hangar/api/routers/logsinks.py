"""An organization's log sinks: add, list, remove (``hangar logs sinks``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from hangar.api.guard import Access, GuardedRouter, requires
from hangar.auth.rbac import Permission
from hangar.controlplane.logsinks import SinkOut, add_sink, list_sinks, remove_sink
from hangar.telemetry.sinks import Credential

router = GuardedRouter(prefix="/v1/orgs/{org}/log-sinks", tags=["logs"])


class AuthIn(BaseModel):
    """Write-only: kept wrapped by the key-encryption key, never shown again."""

    model_config = ConfigDict(extra="forbid")
    scheme: Literal["basic", "apikey", "splunk"] = Field(
        description="basic or apikey (Elasticsearch), splunk (a HEC token)"
    )
    secret: SecretStr = Field(
        max_length=4096, description="the password, API key (id:key encoded) or HEC token"
    )
    username: str = Field(default="", max_length=256, description="for basic only")


class SinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=32, description="loki, elasticsearch, splunk-hec or syslog")
    url: str = Field(
        max_length=2000,
        description="the sink's base URL, without credentials; syslog: tls://host[:port]",
    )
    index: str | None = Field(
        default=None,
        max_length=100,
        description="Elasticsearch index or data stream (default hangar-logs), or Splunk index",
    )
    auth: AuthIn | None = Field(default=None, description="how Hangar proves itself to the sink")


class SinkView(BaseModel):
    id: str
    kind: str
    url: str
    index: str | None
    auth: str | None = Field(description="the credential's scheme; the credential is never shown")
    created_by: str
    created_at: dt.datetime


def _view(sink: SinkOut) -> SinkView:
    return SinkView(**vars(sink))


@router.post("", response_model=SinkView, status_code=201, summary="Add a log sink")
def create(
    org: str, body: SinkIn, access: Annotated[Access, requires(Permission.LOG_SINKS_WRITE)]
) -> SinkView:
    assert access.org is not None
    # A sink receives every machine's output: only someone who may read it all.
    access.check(Permission.LOGS_READ, org=access.org, shown=f"organization {org!r}")
    auth = body.auth
    credential = (
        Credential(auth.scheme, auth.secret.get_secret_value(), auth.username)
        if auth is not None
        else None
    )
    return _view(
        add_sink(
            access.cp,
            access.ctx,
            access.org,
            body.kind,
            body.url,
            credential=credential,
            index=body.index,
        )
    )


@router.get("", response_model=list[SinkView], summary="The organization's log sinks")
def index(
    org: str, access: Annotated[Access, requires(Permission.LOG_SINKS_READ)]
) -> list[SinkView]:
    assert access.org is not None
    return [_view(s) for s in list_sinks(access.cp, access.org)]


@router.delete("/{sink}", status_code=204, summary="Remove a log sink")
def delete(
    org: str,
    sink: Annotated[str, Path(max_length=32)],
    access: Annotated[Access, requires(Permission.LOG_SINKS_WRITE)],
) -> None:
    assert access.org is not None
    remove_sink(access.cp, access.ctx, access.org, sink)
