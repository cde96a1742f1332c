"""The ``hangar.toml`` reference (docs/config.md), generated from the schema.

Types, ranges and defaults come from ``config.appconfig``'s pydantic models;
only what each key does is written here, in ``EFFECTS``. A key of the schema
with no effect written (or an effect for a key that is gone) is an error, so
the reference cannot fall behind the schema: ``hangar config reference``
prints it and a test compares it with the committed docs/config.md.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.functional_validators import BeforeValidator

from hangar.config.appconfig import AppConfig, parse_duration, parse_memory_mb

__all__ = ["EFFECTS", "reference"]

NO_EFFECT = "refused: Hangar does not act on it yet (fly.toml has it)"

# What each key does, by its dotted path; ``[]`` marks an array of tables, ``<name>``
# a table of tables. Keep to one sentence or two: the generator adds the rest.
EFFECTS: dict[str, str] = {
    "app": "the app this file configures; `hangar deploy` creates a release of it",
    "primary_region": "the region new machines are placed in",
    "kill_signal": "the signal a machine gets first when it is stopped or replaced",
    "kill_timeout": "how long a machine has after `kill_signal` before SIGKILL",
    "build": "where the image comes from",
    "build.image": "the image `hangar deploy` deploys without `--image`: `oci:PATH:TAG` "
    "(a relative PATH is taken from this file's directory) or `docker://REF`",
    "env": "environment variables of every machine (names starting `HANGAR_` are reserved)",
    "http_service": "the app's HTTP service at the edge: `<app>.<edge domain>` and its "
    "certificates' hostnames; without it (or `[[services]]`) the app is unreachable from outside",
    "http_service.internal_port": "the port the machines listen on",
    "http_service.force_https": "redirect plain HTTP to HTTPS (301)",
    "http_service.hsts": "the Strict-Transport-Security header; `true`/`false` "
    "stands for `enabled`",
    "http_service.hsts.enabled": "send the header on HTTPS responses",
    "http_service.hsts.max_age": "its `max-age`, seconds",
    "http_service.hsts.include_subdomains": "add `includeSubDomains`",
    "http_service.hsts.preload": "add `preload`",
    "http_service.concurrency": "per-machine load limits at the edge",
    "http_service.concurrency.type": "`requests`: the edge limits the requests in flight to "
    "each machine (it sends a machine one request per connection); `connections` is refused",
    "http_service.concurrency.soft_limit": "connections a machine gets while the app is "
    "lightly loaded (HAProxy's `minconn`); the limit grows toward `hard_limit` under load",
    "http_service.concurrency.hard_limit": "connections a machine gets at most (HAProxy's "
    "`maxconn`); more wait in the edge's queue",
    "http_service.checks[]": "HTTP health checks: a machine gets traffic, and a deploy "
    "goes on, only while they pass",
    "http_service.checks[].grace_period": "how long after start a failing check does not count",
    "http_service.checks[].interval": "time between checks",
    "http_service.checks[].timeout": "how long one check may take",
    "http_service.checks[].method": "the request's method",
    "http_service.checks[].path": "the request's path",
    "http_service.checks[].protocol": "`http` (checks speak plain HTTP); `https` is refused",
    "http_service.checks[].headers": "extra request headers",
    "http_service.rate_limit": "requests per second per client address at the edge "
    "(none: unlimited)",
    "services[]": "TCP services at the edge, one per port set",
    "services[].protocol": "`tcp`; `udp` is refused (not routed yet)",
    "services[].internal_port": "the port the machines listen on",
    "services[].ports[]": "the ports the edge listens on for it",
    "services[].ports[].port": "the edge's port",
    "services[].ports[].handlers": "`tls`: the edge terminates TLS; `proxy_proto`: it sends "
    "the PROXY protocol (v2); `http` is refused (use `[http_service]`)",
    "services[].ports[].force_https": NO_EFFECT,
    "services[].concurrency": "per-machine limits at the edge",
    "services[].concurrency.type": "`connections` (TCP limits count connections); "
    "`requests` is refused",
    "services[].concurrency.soft_limit": NO_EFFECT + " for TCP: set `hard_limit` only",
    "services[].concurrency.hard_limit": "connections a machine gets at most (HAProxy's "
    "`maxconn`); more wait in the edge's queue",
    "services[].tcp_checks[]": "TCP health checks (connect to `internal_port`)",
    "services[].tcp_checks[].grace_period": "how long after start a failing check does not count",
    "services[].tcp_checks[].interval": "time between checks",
    "services[].tcp_checks[].timeout": "how long one connect may take",
    "services[].http_checks[]": NO_EFFECT + ' (use `[checks.NAME]` with `type = "http"`)',
    "services[].http_checks[].grace_period": NO_EFFECT,
    "services[].http_checks[].interval": NO_EFFECT,
    "services[].http_checks[].timeout": NO_EFFECT,
    "services[].http_checks[].method": NO_EFFECT,
    "services[].http_checks[].path": NO_EFFECT,
    "services[].http_checks[].protocol": NO_EFFECT,
    "services[].http_checks[].headers": NO_EFFECT,
    "checks": "named health checks on any port, as `[checks.NAME]`",
    "checks.<name>.type": "`tcp` connects; `http` sends a request",
    "checks.<name>.port": "the machine's port to check",
    "checks.<name>.grace_period": "how long after start a failing check does not count",
    "checks.<name>.interval": "time between checks",
    "checks.<name>.timeout": "how long one check may take",
    "checks.<name>.method": "the request's method (`http`)",
    "checks.<name>.path": "the request's path (`http`)",
    "checks.<name>.headers": "extra request headers (`http`)",
    "mounts[]": "a volume mounted in each machine; each machine holds its own volume of the"
    " name (see docs/volumes.md)",
    "mounts[].source": "the volume's name (`hangar volumes create NAME`)",
    "mounts[].destination": "where the machine sees it: an absolute, normalized path, not under"
    " /proc, /sys, /dev, /tmp or /run",
    "mounts[].initial_size": NO_EFFECT,
    "mounts[].processes": NO_EFFECT,
    "files[]": "secrets given to machines as files (on tmpfs, read-only)",
    "files[].guest_path": "the file's path in the machine: under /run/ or /tmp/",
    "files[].secret_name": "the secret (`hangar secrets set`) the file holds",
    "network": "how the app's machines reach beyond their private network",
    "network.egress": "outbound connections to the internet, through NAT; `false` keeps "
    "machines to their organization's network",
    "deploy": "how a release replaces the machines",
    "deploy.strategy": "`rolling` replaces `max_unavailable` machines at a time, each "
    "health-gated; `canary` replaces one first and rolls on once it passes its checks; "
    "`bluegreen` starts a full new set out of rotation, switches the edge to it at once when "
    "every new machine passes, and stops the old set after `bluegreen_grace`; `immediate` "
    "replaces every machine at once (see docs/deploys.md)",
    "deploy.max_unavailable": "machines a rolling or canary deploy replaces at a time: a count "
    '(1 to 1000), a fraction of the machines (below 1) or a percentage (`"25%"`), rounded up',
    "deploy.drain_timeout": "how long a machine, taken out of the edge's rotation, finishes "
    "its requests before it is stopped and replaced",
    "deploy.bluegreen_grace": "how long a blue-green deploy keeps the old set, out of "
    "rotation, after the switch (at least `drain_timeout`) before stopping it",
    "deploy.max_error_rate": "blue-green only: if, within `error_window` of the switch, the "
    "edge (on the control plane's host) answers more than this share of the app's requests "
    "(at least 20) with a 5xx, the edge switches back to the old set and the release fails; "
    "unset: off",
    "deploy.error_window": "how long after a blue-green's switch `max_error_rate` is watched "
    "(the old set is kept at least this long)",
    "deploy.release_command": "a command run in a one-off machine of the new release before "
    "any machine is replaced; the release fails if it fails",
    "deploy.wait_timeout": "how long a new machine has to pass its checks before the "
    "release fails and is rolled back",
    "vm[]": "machine size (the first table applies)",
    "vm[].cpus": "CPU limit: the machine's cgroup gets this many CPUs' time (a CFS quota)",
    "vm[].memory": "memory limit, MB (`512mb`, `1gb` or a number)",
    "vm[].cpu_kind": "`shared`: machines share the host's CPUs, `cpus` sets their quota; "
    "`performance` is refused",
    "vm[].processes": NO_EFFECT,
    "restart[]": "what happens when a machine's process exits (the first table applies)",
    "restart[].policy": "`always` restarts it, `on-failure` only after a non-zero exit, `no` never",
    "restart[].retries": "restarts allowed within five minutes before the machine is left failed",
    "restart[].processes": NO_EFFECT,
    "metrics": "where the app's machines serve their own Prometheus metrics, scraped by "
    "their host every 15 s over the private network (a table or up to 16)",
    "metrics.port": "the port in the machine",
    "metrics.path": "the path of the metrics page",
    "processes": NO_EFFECT + " (process groups: name = command)",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether None was allowed."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), optional  # noqa: UP007
    return annotation, False


def _model(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _type(field: FieldInfo, annotation: Any) -> str:
    parsers = [m.func for m in field.metadata if isinstance(m, BeforeValidator)]
    if parse_duration in parsers:
        return 'duration (`"500ms"`, `"10s"`, `"2m"`, `"1h"` or seconds)'
    if parse_memory_mb in parsers:
        return 'size (`"512mb"`, `"1gb"` or MB)'
    origin = get_origin(annotation)
    if origin is Annotated:  # an item type with bounds of its own: its base type
        return _type(field, get_args(annotation)[0])
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return "array of tables" if _model(item) else f"array of {_type(FieldInfo(), item)}s"
    if origin is dict:
        value = get_args(annotation)[1]
        return "tables by name" if _model(value) else f"table of {_type(FieldInfo(), value)}s"
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(_type(FieldInfo(), a) for a in get_args(annotation))
    if _model(annotation):
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[annotation]


def _range(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            parts.append(f"≥ {m.ge}")
        elif isinstance(m, annotated_types.Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"≤ {m.le}")
        elif isinstance(m, annotated_types.Lt):
            parts.append(f"< {m.lt}")
        elif isinstance(m, annotated_types.MinLen):
            parts.append(f"at least {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            parts.append(f"at most {m.max_length}")
        elif getattr(m, "pattern", None):
            parts.append(f"matches `{m.pattern}`")
    return ", ".join(parts)


def _default(field: FieldInfo, optional: bool) -> str:
    durations = [m for m in field.metadata if isinstance(m, BeforeValidator)]
    if durations and durations[0].func is parse_duration:
        return f'`"{field.default:g}s"`'
    if field.is_required():
        return "required"
    value = field.default
    if _model(type(value)) or value in ({}, []):
        return "(empty)" if value in ({}, []) else "(see below)"
    if value is None:
        return "none" if optional else "-"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


@dataclass
class _Section:
    path: str  # the key whose table this is: "build", "services[]", "checks.<name>"
    intro: str
    rows: list[list[str]] = field(default_factory=list)


def _walk(model: type[BaseModel], prefix: str, sections: list[_Section]) -> list[list[str]]:
    """The rows of ``model``'s keys; the tables below it are appended to ``sections``."""
    rows: list[list[str]] = []
    nested: list[tuple[str, str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation, optional = _unwrap(info.annotation)
        path = prefix + name
        origin = get_origin(annotation)
        inner: type[BaseModel] | None = None
        child = path
        if origin in (list, dict):
            inner = _model(get_args(annotation)[-1])
            if inner is not None and origin is list:
                path = child = path + "[]"
            elif inner is not None:
                child = path + ".<name>"
        elif origin in (Union, types.UnionType):
            inner = next((m for a in get_args(annotation) if (m := _model(a))), None)
        else:
            inner = _model(annotation)
        effect = _effect(path)
        rows.append(
            [f"`{name}`", _type(info, annotation), _range(info), _default(info, optional), effect]
        )
        if inner is not None:
            nested.append((child, effect, inner))
    for child, effect, inner in nested:
        section = _Section(child, effect)
        sections.append(section)
        section.rows = _walk(inner, child + ".", sections)
    return rows


_SEEN: set[str] = set()


def _effect(path: str) -> str:
    _SEEN.add(path)
    try:
        return EFFECTS[path]
    except KeyError:
        raise KeyError(f"hangar.toml key {path!r} has no effect written in EFFECTS") from None


def _heading(path: str) -> str:
    name = path.replace("[]", "").replace(".<name>", ".NAME")
    return f"`[[{name}]]`" if path.endswith("[]") else f"`[{name}]`"


HEADER = """\
# `hangar.toml` reference

<!-- Generated by `hangar config reference > docs/config.md` from the schema in
src/hangar/config/appconfig.py; a test fails when the two differ. Edit the
effects in src/hangar/cli/config_reference.py, not this file. -->

An app's `hangar.toml` names the app, its image, how the edge serves it, its
checks, secrets as files, deploy strategy and machine size. Unknown keys are
refused, and every error names the file, the line and the key:
`hangar config validate` checks a file without deploying it. The format
follows Fly.io's `fly.toml`; keys and values of fly.toml Hangar does not act on yet
are refused with the reason, never accepted and ignored.

Durations are `"500ms"`, `"10s"`, `"2m"`, `"1h"` or a number of seconds.
`[[x]]` is an array of tables (write it once per item); `[x.NAME]` a table of
tables, one per name you choose.
"""


def reference() -> str:
    """docs/config.md: every key of hangar.toml with its type, range, default and effect."""
    sections: list[_Section] = []
    _SEEN.clear()
    top = _Section("", "", _walk(AppConfig, "", sections))
    if stale := sorted(set(EFFECTS) - _SEEN):
        raise KeyError(f"EFFECTS describes keys hangar.toml no longer has: {stale}")
    out = [HEADER]
    for section in [top, *sections]:
        out.append(f"## {_heading(section.path) if section.path else 'Top level'}\n")
        if section.intro:
            out.append(section.intro[0].upper() + section.intro[1:] + ".\n")
        out.append("| key | type | range | default | effect |")
        out.append("| --- | --- | --- | --- | --- |")
        out.extend(
            "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in section.rows
        )
        out.append("")
    return "\n".join(out)
