"""Log sinks: where an organization's machines' output is shipped, one driver per kind.

A driver takes a batch of records (``ts``, ``org``, ``app``, ``machine``,
``stream``, ``line``), oldest first, and delivers them in order or raises
``SinkError``: ``retry`` says whether the same batch may succeed later (the
sink down, overloaded, answering 429 or 5xx) or never will (it refused
the batch itself). A sink that takes a batch item by item (Elasticsearch's
bulk API, Splunk's collector naming the event it could not parse) may take
part of it: ``push`` then returns a ``Partial`` naming, by their index in
the batch, the records to send again and those refused for good, so that
only those are retried and the refused ones are counted exactly. Only kinds
registered in ``DRIVERS`` can be configured; the others are refused by name.

A driver's credential (a Splunk token, an Elasticsearch API key or user and
password) is handed to it in memory only: the caller keeps it sealed.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from hangar.errors import HangarError

__all__ = [
    "CREDENTIALS",
    "DRIVERS",
    "KNOWN_KINDS",
    "Credential",
    "Elasticsearch",
    "LogSink",
    "Loki",
    "Partial",
    "SinkError",
    "SplunkHec",
    "Syslog",
    "driver_for",
]

Record = dict[str, Any]
PUSH_SECONDS = 30.0


class SinkError(HangarError):
    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Partial:
    """What a sink did not take of a batch: indexes into it, oldest first."""

    retry: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    reason: str = ""


@dataclass(frozen=True, repr=False)
class Credential:
    """How Hangar proves itself to a sink. Never printed: ``repr`` hides it."""

    scheme: str  # "basic", "apikey" (Elasticsearch), "splunk" (a HEC token)
    secret: str
    username: str = ""

    def __repr__(self) -> str:
        return f"Credential({self.scheme}, ***)"

    def header(self) -> str:
        if self.scheme == "basic":
            raw = f"{self.username}:{self.secret}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if self.scheme == "apikey":
            return "ApiKey " + self.secret
        return "Splunk " + self.secret

    def dumps(self) -> bytes:
        return json.dumps(
            {"scheme": self.scheme, "secret": self.secret, "username": self.username}
        ).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Credential:
        data = json.loads(raw)
        return cls(str(data["scheme"]), str(data["secret"]), str(data.get("username", "")))


class LogSink(Protocol):
    def push(self, records: list[Record]) -> Partial | None: ...


def _nanoseconds(ts: str) -> str:
    when = dt.datetime.fromisoformat(ts)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return str((delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000)


class _HttpSink:
    """What the HTTP drivers share: the endpoint (``PATH`` under the sink's URL), the
    credential as an ``Authorization`` header, one client with the push deadline that
    follows no redirect, and a post whose transport failure is worth a retry."""

    NAME = ""
    PATH = ""
    CONTENT_TYPE = "application/json"

    def __init__(
        self,
        url: str,
        credential: Credential | None = None,
        index: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/") + self.PATH
        self.index = index
        self.headers = {"Content-Type": self.CONTENT_TYPE}
        if credential is not None:
            self.headers["Authorization"] = credential.header()
        self.client = client or httpx.Client(timeout=PUSH_SECONDS, follow_redirects=False)

    def _post(self, content: bytes) -> httpx.Response:
        try:
            return self.client.post(self.url, content=content, headers=self.headers)
        except httpx.HTTPError as exc:
            raise SinkError(f"{self.NAME}: {exc}", retry=True) from exc

    def close(self) -> None:
        self.client.close()


class Loki(_HttpSink):
    """Grafana Loki's push API (``POST /loki/api/v1/push``, JSON).

    Each (org, app, machine, stream) is one Loki stream, labelled so; lines
    keep their order within it, as Loki requires.
    """

    NAME = "loki"
    PATH = "/loki/api/v1/push"

    @staticmethod
    def payload(records: list[Record]) -> dict[str, Any]:
        streams: dict[tuple[str, str, str, str], list[list[str]]] = {}
        for r in records:
            key = (str(r["org"]), str(r["app"]), str(r["machine"]), str(r["stream"]))
            streams.setdefault(key, []).append([_nanoseconds(str(r["ts"])), str(r["line"])])
        return {
            "streams": [
                {
                    # Audit events belong to no app or machine: no empty labels.
                    "stream": {
                        k: v
                        for k, v in (
                            ("org", org),
                            ("app", app),
                            ("machine", machine),
                            ("stream", stream),
                        )
                        if v
                    },
                    "values": values,
                }
                for (org, app, machine, stream), values in streams.items()
            ]
        }

    def push(self, records: list[Record]) -> Partial | None:
        answer = self._post(json.dumps(self.payload(records)).encode())
        if answer.status_code == 429 or answer.status_code >= 500:
            raise SinkError(f"loki answered {answer.status_code}", retry=True)
        if answer.status_code >= 300:
            raise SinkError(
                f"loki refused the batch: {answer.status_code} {answer.text[:200]}", retry=False
            )
        return None


def _retry_status(status: int) -> bool:
    """Answers after which the same request may succeed: overloaded, down, or not
    (yet) authorized, which an operator fixes at the sink while records wait."""
    return status in (401, 403, 408, 429) or status >= 500


def _document(record: Record) -> dict[str, Any]:
    return {
        "@timestamp": str(record["ts"]),
        "message": str(record["line"]),
        "org": str(record["org"]),
        "app": str(record["app"]),
        "machine": str(record["machine"]),
        "stream": str(record["stream"]),
    }


class Elasticsearch(_HttpSink):
    """Elasticsearch's (and OpenSearch's) bulk API: ``POST /_bulk``, NDJSON.

    Each record is one ``create`` into ``index`` (a data stream or an index;
    ``hangar-logs`` unless the sink names another). The bulk API answers
    item by item: items that failed with 429 or 5xx are sent again, alone;
    items refused (a mapping conflict, a 400) are dropped and counted. A
    ``create`` that finds its document already there (409, a repeat after a
    crash) counts as taken.
    """

    NAME = "elasticsearch"
    PATH = "/_bulk"
    CONTENT_TYPE = "application/x-ndjson"

    def body(self, records: list[Record]) -> bytes:
        action = json.dumps({"create": {"_index": self.index or "hangar-logs"}})
        lines = []
        for r in records:
            lines += [action, json.dumps(_document(r), separators=(",", ":"))]
        return ("\n".join(lines) + "\n").encode()

    def push(self, records: list[Record]) -> Partial | None:
        answer = self._post(self.body(records))
        if _retry_status(answer.status_code):
            raise SinkError(f"elasticsearch answered {answer.status_code}", retry=True)
        if answer.status_code >= 300:
            raise SinkError(
                f"elasticsearch refused the batch: {answer.status_code} {answer.text[:200]}",
                retry=False,
            )
        try:
            result = answer.json()
            items = result["items"]
        except (ValueError, KeyError, TypeError) as exc:
            # Whether it took the batch is unknown: send it again (at least once).
            raise SinkError(
                "elasticsearch answered a bulk request without items", retry=True
            ) from exc
        if not result.get("errors"):
            return None
        if not isinstance(items, list) or len(items) != len(records):
            raise SinkError("elasticsearch answered for another number of items", retry=True)
        retry: list[int] = []
        refused: list[int] = []
        reason = ""
        for n, item in enumerate(items):
            outcome = next(iter(item.values())) if isinstance(item, dict) and item else {}
            status = int(outcome.get("status", 500)) if isinstance(outcome, dict) else 500
            if status < 300 or status == 409:
                continue
            if status == 429 or status >= 500:
                retry.append(n)
            else:
                refused.append(n)
                error = outcome.get("error", {}) if isinstance(outcome, dict) else {}
                reason = (
                    reason
                    or str(error.get("type", status) if isinstance(error, dict) else error)[:200]
                )
        if not retry and not refused:
            return None
        return Partial(retry, refused, reason)


class SplunkHec(_HttpSink):
    """Splunk's HTTP Event Collector: ``POST /services/collector/event``.

    Authenticates with ``Authorization: Splunk <token>``; events are JSON
    objects one after another, ``time`` in epoch seconds, the record's
    fields as the event and as indexed ``fields``. 503 (server busy) and
    other 5xx, 429, 401 and 403 are retried. A 400 naming the event it
    could not take (``invalid-event-number``) drops that event alone and
    sends the others again; any other 400 refuses the batch.
    """

    NAME = "splunk"
    PATH = "/services/collector/event"

    def __init__(
        self,
        url: str,
        credential: Credential | None = None,
        index: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if credential is None or credential.scheme != "splunk":
            raise SinkError("a Splunk HEC sink needs its token", retry=False)
        super().__init__(url, credential, index, client)

    def body(self, records: list[Record]) -> bytes:
        out = []
        for r in records:
            when = dt.datetime.fromisoformat(str(r["ts"]))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            event: dict[str, Any] = {
                "time": f"{when.timestamp():.6f}",
                "source": f"hangar:{r['org']}:{r['app']}",
                "sourcetype": "hangar",
                "event": {"line": str(r["line"]), "stream": str(r["stream"])},
                "fields": {
                    "org": str(r["org"]),
                    "app": str(r["app"]),
                    "machine": str(r["machine"]),
                    "stream": str(r["stream"]),
                },
            }
            if r["machine"]:
                event["host"] = str(r["machine"])
            if self.index:
                event["index"] = self.index
            out.append(json.dumps(event, separators=(",", ":")))
        return "\n".join(out).encode()

    def push(self, records: list[Record]) -> Partial | None:
        answer = self._post(self.body(records))
        if answer.status_code < 300:
            return None
        try:
            said = answer.json()
        except ValueError:
            said = {}
        text = str(said.get("text", answer.text[:200])) if isinstance(said, dict) else ""
        if _retry_status(answer.status_code):
            raise SinkError(f"splunk answered {answer.status_code}: {text}", retry=True)
        bad = said.get("invalid-event-number") if isinstance(said, dict) else None
        if answer.status_code == 400 and isinstance(bad, int) and 0 <= bad < len(records):
            # Whether the events before it were indexed is not said: sending
            # them again may repeat them, never lose them.
            others = [n for n in range(len(records)) if n != bad]
            return Partial(others, [bad], text)
        raise SinkError(f"splunk refused the batch: {answer.status_code} {text}", retry=False)


def _sd_value(value: str) -> str:
    """An RFC 5424 structured-data parameter value: '"', '\\' and ']' escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _field(value: str, most: int) -> str:
    """A header field: printable ASCII without spaces, or the nil value ``-``."""
    kept = "".join(c for c in value if 0x21 <= ord(c) <= 0x7E)[:most]
    return kept or "-"


class Syslog:
    """Syslog (RFC 5424 messages) over TLS (RFC 5425): ``tls://host[:6514]``.

    Each record is one message, framed by octet counting. Facility user
    (1), severity info for stdout and err for stderr; audit events are
    facility log audit (13). HOSTNAME is the machine, APP-NAME the app,
    MSGID the stream; the organization, app, machine and stream are also
    structured data (``hangar@32473``). The server's certificate is checked
    against the system's trust store and the URL's host name. Syslog over
    TLS has no acknowledgement: a batch counts as taken once written to the
    connection.
    """

    def __init__(
        self,
        url: str,
        credential: Credential | None = None,
        index: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or 6514
        self.context = context or ssl.create_default_context()
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._conn: ssl.SSLSocket | None = None

    @staticmethod
    def message(record: Record) -> bytes:
        stream = str(record["stream"])
        pri = 13 * 8 + 6 if stream == "audit" else 8 + (3 if stream == "stderr" else 6)
        when = dt.datetime.fromisoformat(str(record["ts"]))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        stamp = when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        sd = "".join(
            f' {k}="{_sd_value(str(record[k]))}"'
            for k in ("org", "app", "machine", "stream")
            if record[k]
        )
        head = (
            f"<{pri}>1 {stamp} {_field(str(record['machine']), 255)}"
            f" {_field(str(record['app']) or 'hangar', 48)} - {_field(stream, 32)}"
            f" [hangar@32473{sd}] "
        )
        line = str(record["line"]).replace("\n", " ")
        return head.encode() + line.encode("utf-8", "replace")

    def _connection(self) -> ssl.SSLSocket:
        if self._conn is None:
            raw = socket.create_connection((self.host, self.port), timeout=PUSH_SECONDS)
            try:
                self._conn = self.context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def push(self, records: list[Record]) -> Partial | None:
        frames = b"".join(
            str(len(m)).encode() + b" " + m for m in (self.message(r) for r in records)
        )
        try:
            self._connection().sendall(frames)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise SinkError(f"syslog: {exc}", retry=True) from exc
        return None


Driver = Callable[[str, Credential | None, str | None], LogSink]
DRIVERS: dict[str, Driver] = {
    "loki": Loki,
    "elasticsearch": Elasticsearch,
    "splunk-hec": SplunkHec,
    "syslog": Syslog,
}
# Which credentials each kind takes; the first is required when ``required``.
CREDENTIALS: dict[str, tuple[tuple[str, ...], bool]] = {
    "loki": ((), False),
    "elasticsearch": (("basic", "apikey"), False),
    "splunk-hec": (("splunk",), True),
    "syslog": ((), False),
}
# Kinds people ask for that Hangar does not ship to yet: refused by name.
KNOWN_KINDS = ("loki", "elasticsearch", "splunk-hec", "syslog")


def driver_for(
    kind: str, url: str, credential: Credential | None = None, index: str | None = None
) -> LogSink:
    return DRIVERS[kind](url, credential, index)
