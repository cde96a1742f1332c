"""Log sinks: where an organization's machines' output is shipped, one driver per kind.

A driver takes a batch of records (``ts``, ``org``, ``app``, ``machine``,
``stream``, ``line``), oldest first, and delivers them in order or raises
``SinkError``: ``retry`` says whether the same batch may succeed later (the
sink down, overloaded, answering 429 or 5xx) or never will (it refused
the batch itself). Only kinds registered in ``DRIVERS`` can be configured;
the others are refused by name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from hangar.errors import HangarError

__all__ = ["DRIVERS", "KNOWN_KINDS", "LogSink", "Loki", "SinkError", "driver_for"]

Record = dict[str, Any]
PUSH_SECONDS = 30.0


class SinkError(HangarError):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class LogSink(Protocol):
    def push(self, records: list[Record]) -> None: ...


def _nanoseconds(ts: str) -> str:
    when = dt.datetime.fromisoformat(ts)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return str((delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000)


class Loki:
    """Grafana Loki's push API (``POST /loki/api/v1/push``, JSON).

    Each (org, app, machine, stream) is one Loki stream, labelled so; lines
    keep their order within it, as Loki requires.
    """

    def __init__(self, url: str, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/") + "/loki/api/v1/push"
        self.client = client or httpx.Client(timeout=PUSH_SECONDS, follow_redirects=False)

    @staticmethod
    def payload(records: list[Record]) -> dict[str, Any]:
        streams: dict[tuple[str, str, str, str], list[list[str]]] = {}
        for r in records:
            key = (str(r["org"]), str(r["app"]), str(r["machine"]), str(r["stream"]))
            streams.setdefault(key, []).append([_nanoseconds(str(r["ts"])), str(r["line"])])
        return {
            "streams": [
                {
                    "stream": {"org": org, "app": app, "machine": machine, "stream": stream},
                    "values": values,
                }
                for (org, app, machine, stream), values in streams.items()
            ]
        }

    def push(self, records: list[Record]) -> None:
        try:
            answer = self.client.post(self.url, json=self.payload(records))
        except httpx.HTTPError as exc:
            raise SinkError(f"loki: {exc}", retry=True) from exc
        if answer.status_code == 429 or answer.status_code >= 500:
            raise SinkError(f"loki answered {answer.status_code}", retry=True)
        if answer.status_code >= 300:
            raise SinkError(
                f"loki refused the batch: {answer.status_code} {answer.text[:200]}", retry=False
            )


DRIVERS: dict[str, Callable[[str], LogSink]] = {"loki": Loki}
# Kinds people ask for that Hangar does not ship to yet: refused by name.
KNOWN_KINDS = ("loki", "elasticsearch", "splunk-hec", "syslog")


def driver_for(kind: str, url: str) -> LogSink:
    return DRIVERS[kind](url)
