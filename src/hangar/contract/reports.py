"""What a host reports with its machines' statuses: their output, and its edge's access lines.

``Report`` is the body of a host's report, validated at the control plane's
boundary. ``access`` (contract version 2) holds the access lines of the
apps this host's edge served since the last report, by app name, without
query strings; the control plane keeps them only from a host joined as an
edge and only for apps its routing table gives that edge.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hangar.contract import VERSION

__all__ = [
    "MAX_ACCESS_APPS",
    "MAX_ACCESS_LINE",
    "MAX_ACCESS_LINES",
    "AccessRecord",
    "LogRecord",
    "Report",
    "without_query",
]

MAX_ACCESS_APPS = 10_000  # apps with access lines in one report
MAX_ACCESS_LINES = 20_000  # access lines of one app in one report
MAX_ACCESS_LINE = 8192  # characters of one access line (the edge's own cap on a datagram)

_QUERY = re.compile(r"[?#][^ ]*")


def without_query(line: str) -> str:
    """An access line with anything from a ``?`` or ``#`` to the next space cut.

    The edge never sends a query string; the receiving side cuts again, so
    that a line holding one is never stored or shipped whoever wrote it.
    """
    return _QUERY.sub("", line)


class LogRecord(BaseModel):
    """One line of a machine's output."""

    model_config = ConfigDict(extra="forbid")
    ts: str = Field(max_length=40)
    stream: Literal["stdout", "stderr"]
    line: str = Field(max_length=64 << 10)


class AccessRecord(BaseModel):
    """One request the edge passed to an app: ``client method path status bytes time``."""

    model_config = ConfigDict(extra="forbid")
    ts: str = Field(max_length=40)
    stream: Literal["access"] = "access"
    line: str = Field(max_length=MAX_ACCESS_LINE)


AppName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class Report(BaseModel):
    """A host's report: its machines' statuses and errors, their output, its edge's lines."""

    model_config = ConfigDict(extra="forbid")
    contract: int = VERSION
    machines: dict[str, dict[str, Any]] = Field(max_length=10_000)
    errors: dict[str, str] = Field(default_factory=dict, max_length=10_000)
    logs: dict[str, list[LogRecord]] = Field(default_factory=dict, max_length=10_000)
    access: dict[AppName, Annotated[list[AccessRecord], Field(max_length=MAX_ACCESS_LINES)]] = (
        Field(default_factory=dict, max_length=MAX_ACCESS_APPS)
    )
