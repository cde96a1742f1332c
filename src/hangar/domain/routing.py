"""The edge's routing table (pure): which hostnames and ports lead to which machines.

The control plane builds a ``RoutingTable`` from the store; the agent of an
edge host renders it into HAProxy's configuration. Nothing is routed unless
an app declares it: an app without ``[http_service]`` or ``[[services]]`` has
no entry, and a host name that no app holds gets the edge's plain 404.

A table has two parts that change at different speeds. Its *shape* (routes,
servers, certificates) needs a new HAProxy configuration; the *state* of each
server (in rotation or not) changes with machine health and deploys and is
applied through HAProxy's runtime API without a reload.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from hangar.errors import ValidationError

__all__ = [
    "ACME_CHALLENGE_PREFIX",
    "CertBundle",
    "HttpRoute",
    "RoutingTable",
    "Server",
    "TcpRoute",
    "edge_seal_context",
    "hsts_header",
    "validate_hostname",
]

ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_hostname(name: str, *, wildcard: bool = False) -> str:
    """A lowercase fully qualified DNS name (``*.`` first only if ``wildcard``); else raise.

    IP addresses, single labels, trailing dots, ports and anything with a
    character outside letters, digits, hyphens and dots are refused: each
    could route or certify something the caller does not own.
    """
    text = name.strip().lower() if isinstance(name, str) else ""
    body = text[2:] if wildcard and text.startswith("*.") else text
    labels = body.split(".")
    problem = None
    if not text or len(text) > 253:
        problem = "must be 1 to 253 characters"
    elif len(labels) < 2:
        problem = "must have at least two labels (e.g. clinic.example.com)"
    elif not all(_LABEL.fullmatch(label) for label in labels):
        problem = "labels are 1-63 letters, digits and hyphens, not starting or ending in '-'"
    elif labels[-1].isdigit():
        problem = "an IP address cannot have a certificate at the edge"
    if problem:
        raise ValidationError(f"{name!r} is not a host name: {problem}")
    return text


def hsts_header(max_age: int, include_subdomains: bool, preload: bool) -> str:
    value = f"max-age={max_age}"
    if include_subdomains:
        value += "; includeSubDomains"
    if preload:
        value += "; preload"
    return value


@dataclass(frozen=True)
class Server:
    """One machine behind a route. ``up`` is false while it is unhealthy or being replaced."""

    name: str
    address: str
    port: int
    up: bool


@dataclass(frozen=True)
class HttpRoute:
    app: str
    hostnames: tuple[str, ...]
    servers: tuple[Server, ...]
    force_https: bool = True
    hsts: str | None = None  # the Strict-Transport-Security value, if on
    soft_limit: int = 20
    hard_limit: int = 25
    rate_limit: int | None = None  # requests per second per client address
    org: str = ""  # the organization the app belongs to: only its certificates serve these names


@dataclass(frozen=True)
class TcpRoute:
    app: str
    port: int
    servers: tuple[Server, ...]
    tls: bool = False
    proxy_protocol: bool = False
    hard_limit: int = 25


@dataclass(frozen=True)
class CertBundle:
    """A certificate chain and its private key, PEM, for the host names it covers.

    The key is plaintext here: a table holding bundles exists only in memory
    and in the edge's tmpfs.
    """

    hostname: str
    fullchain_pem: str
    key_pem: str = field(repr=False)
    org: str = ""  # the organization that proved control of the name; "" for the installation's

    def covers(self, name: str) -> bool:
        """True if this certificate is valid for ``name`` (a wildcard covers one label)."""
        if self.hostname.startswith("*."):
            head, _, rest = name.partition(".")
            return bool(head) and head != "*" and rest == self.hostname[2:]
        return name == self.hostname


@dataclass(frozen=True)
class RoutingTable:
    http: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()
    certs: tuple[CertBundle, ...] = ()
    # Where the edge sends HTTP-01 challenges: the control plane's API, "host:port".
    acme_responder: str | None = None

    def shape(self) -> dict[str, Any]:
        """Everything but the servers' up/down state: a change here needs a reload."""
        data = asdict(self)
        for route in (*data["http"], *data["tcp"]):
            for server in route["servers"]:
                server.pop("up")
        return data

    def shape_digest(self) -> str:
        canonical = json.dumps(self.shape(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def states(self) -> dict[tuple[str, str], bool]:
        """(backend, server) → in rotation, for every server of every route."""
        out: dict[tuple[str, str], bool] = {}
        for route in self.http:
            for server in route.servers:
                out[(http_backend(route.app), server.name)] = server.up
        for tcp in self.tcp:
            for server in tcp.servers:
                out[(tcp_backend(tcp.app, tcp.port), server.name)] = server.up
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoutingTable:
        """A table as the control plane sent it; ValidationError if malformed."""
        try:
            return cls(
                http=tuple(
                    HttpRoute(
                        **{
                            **r,
                            "hostnames": tuple(r["hostnames"]),
                            "servers": tuple(Server(**s) for s in r["servers"]),
                        }
                    )
                    for r in data.get("http", [])
                ),
                tcp=tuple(
                    TcpRoute(**{**r, "servers": tuple(Server(**s) for s in r["servers"])})
                    for r in data.get("tcp", [])
                ),
                certs=tuple(CertBundle(**c) for c in data.get("certs", [])),
                acme_responder=data.get("acme_responder"),
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValidationError(f"malformed routing table: {exc}") from exc


def edge_seal_context(host_id: str) -> str:
    """What binds a routing table's sealed keys to the edge host they were sealed for."""
    return f"edge:{host_id}"


def http_backend(app: str) -> str:
    return f"app_{app}"


def tcp_backend(app: str, port: int) -> str:
    return f"tcp_{app}_{port}"
