"""Organizations' metrics: what agents shipped of each machine, served to its own members.

Agents send each machine's figures (cgroup usage and the app's own metrics)
as exposition text. They are kept in memory, under the machine as the store
knows it, only from the host the machine is assigned to; read back for one
organization or one app, every sample is labelled again from the store
(org, app, machine), so no label a tenant or a host wrote can move a sample
into another organization's view. Figures older than ``STALE`` are dropped.
Each API replica holds what the agents it serves sent: with several
replicas, a scrape sees the machines of the agents connected to that one.

Edge hosts send each app's figures at their edge (``hangar_edge_*``, read
from HAProxy's exporter) by app name. They are kept only from a host joined
as an edge, only for an app the store has, and only ``hangar_edge_*``
families; served, they are labelled again from the store (org, app) and
with the edge host's id (``edge``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from hangar.controlplane.metricscache import Shipped
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, Host, Machine

__all__ = [
    "EDGE_PREFIX",
    "MAX_TEXT",
    "AppFigures",
    "EdgeFigures",
    "MachineFigures",
    "app_figures",
    "org_exposition",
    "receive",
    "receive_edge",
]

log = logging.getLogger("hangar.controlplane")

MAX_TEXT = 512 << 10  # bytes of exposition text accepted for one machine


def receive(cp: ControlPlane, host_id: str, figures: Mapping[str, tuple[float, str]]) -> int:
    """Keep what a host shipped, for its own machines only; returns how many were kept."""
    if not figures:
        return 0
    with cp.db.read() as session:
        mine = set(
            session.execute(
                select(Machine.id).where(Machine.id.in_(list(figures)), Machine.host_id == host_id)
            ).scalars()
        )
    now = time.time()
    kept = 0
    for machine_id, (at, text) in figures.items():
        if machine_id not in mine or len(text) > MAX_TEXT:
            continue
        # A host's clock may drift: what it calls "now" is no later than ours.
        cp.app_metrics.put(machine_id, Shipped(host_id, min(at, now), text))
        kept += 1
    return kept


EDGE_PREFIX = "hangar_edge_"
MAX_EDGE_TEXT = 16 << 10  # bytes of an app's figures at one edge (a few dozen lines)


def _edge_key(app_id: str, host_id: str) -> str:
    return f"edge:{app_id}:{host_id}"


def receive_edge(cp: ControlPlane, host_id: str, figures: Mapping[str, tuple[float, str]]) -> int:
    """Keep an edge host's figures of apps, by app name; returns how many were kept.

    A host not joined as an edge sends none: it keeps nothing. A name the store
    does not know is ignored.
    """
    if not figures:
        return 0
    with cp.db.read() as session:
        host = session.get(Host, host_id)
        if host is None or not host.edge:
            log.warning("host %s sent edge figures but is not an edge host", host_id)
            return 0
        apps = dict(
            session.execute(select(App.name, App.id).where(App.name.in_(list(figures)))).all()
        )
    now = time.time()
    kept = 0
    for name, (at, text) in figures.items():
        app_id = apps.get(name)
        if app_id is None or len(text) > MAX_EDGE_TEXT:
            continue
        cp.app_metrics.put(_edge_key(app_id, host_id), Shipped(host_id, min(at, now), text))
        kept += 1
    return kept


def _families(text: str, labels: dict[str, str], only: str | None = None) -> Iterator[Metric]:
    try:
        for family in text_string_to_metric_families(text):
            if only is not None and not family.name.startswith(only):
                continue
            family.samples = [
                s._replace(labels={**s.labels, **labels})
                for s in family.samples
                if not math.isnan(s.value)
            ]
            yield family
    except (ValueError, TypeError, IndexError) as exc:
        log.warning("metrics of machine %s did not parse: %s", labels.get("machine"), exc)


def _machines(cp: ControlPlane, org_id: str, app_id: str | None) -> list[tuple[str, str]]:
    query = select(Machine.id, App.name).join(App, App.id == Machine.app_id)
    query = query.where(App.org_id == org_id)
    if app_id is not None:
        query = query.where(App.id == app_id)
    with cp.db.read() as session:
        return [(m, a) for m, a in session.execute(query.order_by(Machine.id)).all()]


def _apps(cp: ControlPlane, org_id: str, app_id: str | None) -> list[tuple[str, str]]:
    query = select(App.id, App.name).where(App.org_id == org_id)
    if app_id is not None:
        query = query.where(App.id == app_id)
    with cp.db.read() as session:
        return [(i, n) for i, n in session.execute(query.order_by(App.name)).all()]


def _merged(
    cp: ControlPlane, org_id: str, app_id: str | None, readable: Callable[[str], bool]
) -> list[Metric]:
    """The organization's (or one app's) families, one per name, samples relabelled."""
    now = time.time()
    merged: dict[str, Metric] = {}

    def add(families: Iterable[Metric]) -> None:
        for family in families:
            have = merged.get(family.name)
            if have is None:
                merged[family.name] = family
            elif have.type == family.type:
                have.samples.extend(family.samples)
            # else: two machines disagree on a metric's type; the first one stands

    for machine_id, app in _machines(cp, org_id, app_id):
        if not readable(app):
            continue  # a token bound to other apps
        shipped = cp.app_metrics.get(machine_id, now)
        if shipped is None:
            continue
        add(_families(shipped.text, {"org": org_id, "app": app, "machine": machine_id}))
    for the_app, app in _apps(cp, org_id, app_id):
        if not readable(app):
            continue
        for _key, edge in cp.app_metrics.matching(_edge_key(the_app, ""), now):
            labels = {"org": org_id, "app": app, "edge": edge.host_id}
            add(_families(edge.text, labels, only=EDGE_PREFIX))
    return list(merged.values())


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def org_exposition(
    cp: ControlPlane,
    org_id: str,
    app_id: str | None = None,
    readable: Callable[[str], bool] = lambda app: True,
) -> bytes:
    """The organization's machines' figures (or one app's) in the Prometheus text format.

    ``readable`` says which apps (by name) the caller may read: the machines
    of the others are left out.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(_merged(cp, org_id, app_id, readable)))
    return generate_latest(registry)


@dataclass(frozen=True)
class MachineFigures:
    """The key figures of one machine, for `hangar metrics`."""

    machine: str
    age_seconds: float | None  # since its figures were collected; None: none yet
    cpu_seconds: float | None
    memory_bytes: float | None
    pids: float | None
    scrape_ok: bool | None  # None: the app declares no [metrics]
    app_series: int
    # Its traffic through its host, from the host's nftables counters (None: not counted).
    rx_bytes: float | None = None
    tx_bytes: float | None = None
    rx_packets: float | None = None
    tx_packets: float | None = None


@dataclass(frozen=True)
class EdgeFigures:
    """The key figures of one app at one edge host, for `hangar metrics`."""

    edge: str  # the edge host's name
    age_seconds: float
    requests: float | None
    responses: dict[str, float]  # by status class: 1xx … 5xx, other
    response_time_seconds: float | None  # average over the last 1024 requests
    current_sessions: float | None
    bytes_in: float | None
    bytes_out: float | None


@dataclass(frozen=True)
class AppFigures:
    machines: list[MachineFigures]
    edge: list[EdgeFigures]


_NETWORK = {
    "hangar_machine_network_receive_bytes_total": "rx_bytes",
    "hangar_machine_network_transmit_bytes_total": "tx_bytes",
    "hangar_machine_network_receive_packets_total": "rx_packets",
    "hangar_machine_network_transmit_packets_total": "tx_packets",
}


def _machine_figures(cp: ControlPlane, org_id: str, app: App, now: float) -> list[MachineFigures]:
    out = []
    for machine_id, _ in _machines(cp, org_id, app.id):
        shipped = cp.app_metrics.get(machine_id, now)
        values: dict[str, float] = {}
        series = 0
        if shipped is not None:
            for family in _families(shipped.text, {}):
                for sample in family.samples:
                    if sample.name.startswith("hangar_"):
                        values[sample.name] = sample.value
                    else:
                        series += 1
        scrape = values.get("hangar_scrape_ok")
        out.append(
            MachineFigures(
                machine=machine_id,
                age_seconds=None if shipped is None else max(0.0, now - shipped.at),
                cpu_seconds=values.get("hangar_machine_cpu_seconds_total"),
                memory_bytes=values.get("hangar_machine_memory_bytes"),
                pids=values.get("hangar_machine_pids"),
                scrape_ok=None if scrape is None else scrape == 1,
                app_series=series,
                **{field: values.get(name) for name, field in _NETWORK.items()},
            )
        )
    return out


def _edge_figures(cp: ControlPlane, app: App, now: float) -> list[EdgeFigures]:
    found = cp.app_metrics.matching(_edge_key(app.id, ""), now)
    if not found:
        return []
    with cp.db.read() as session:
        names = dict(
            session.execute(
                select(Host.id, Host.name).where(Host.id.in_([e.host_id for _, e in found]))
            ).all()
        )
    out = []
    for _key, shipped in found:
        values: dict[str, float] = {}
        responses: dict[str, float] = {}
        for family in _families(shipped.text, {}, only=EDGE_PREFIX):
            for sample in family.samples:
                if sample.name == "hangar_edge_http_responses_total":
                    code = sample.labels.get("code", "other")
                    responses[code] = responses.get(code, 0.0) + sample.value
                else:
                    values[sample.name] = sample.value
        out.append(
            EdgeFigures(
                edge=names.get(shipped.host_id, shipped.host_id),
                age_seconds=max(0.0, now - shipped.at),
                requests=values.get("hangar_edge_http_requests_total"),
                responses=dict(sorted(responses.items())),
                response_time_seconds=values.get("hangar_edge_response_time_average_seconds"),
                current_sessions=values.get("hangar_edge_current_sessions"),
                bytes_in=values.get("hangar_edge_bytes_in_total"),
                bytes_out=values.get("hangar_edge_bytes_out_total"),
            )
        )
    return sorted(out, key=lambda e: e.edge)


def app_figures(cp: ControlPlane, org_id: str, app: App) -> AppFigures:
    """The key figures of an app: each machine's, and the app's at each edge host."""
    now = time.time()
    return AppFigures(_machine_figures(cp, org_id, app, now), _edge_figures(cp, app, now))
