"""Organizations' metrics: what agents shipped of each machine, served to its own members.

Agents send each machine's figures (cgroup usage and the app's own metrics)
as exposition text. They are kept in memory, under the machine as the store
knows it, only from the host the machine is assigned to; read back for one
organization or one app, every sample is labelled again from the store
(org, app, machine), so no label a tenant or a host wrote can move a sample
into another organization's view. Figures older than ``STALE`` are dropped.
Each API replica holds what the agents it serves sent: with several
replicas, a scrape sees the machines of the agents connected to that one.
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
from hangar.store.tables import App, Machine

__all__ = ["MAX_TEXT", "MachineFigures", "app_figures", "org_exposition", "receive"]

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


def _families(text: str, labels: dict[str, str]) -> Iterator[Metric]:
    try:
        for family in text_string_to_metric_families(text):
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


def _merged(
    cp: ControlPlane, org_id: str, app_id: str | None, readable: Callable[[str], bool]
) -> list[Metric]:
    """The organization's (or one app's) families, one per name, samples relabelled."""
    now = time.time()
    merged: dict[str, Metric] = {}
    for machine_id, app in _machines(cp, org_id, app_id):
        if not readable(app):
            continue  # a token bound to other apps
        shipped = cp.app_metrics.get(machine_id, now)
        if shipped is None:
            continue
        labels = {"org": org_id, "app": app, "machine": machine_id}
        for family in _families(shipped.text, labels):
            have = merged.get(family.name)
            if have is None:
                merged[family.name] = family
            elif have.type == family.type:
                have.samples.extend(family.samples)
            # else: two machines disagree on a metric's type; the first one stands
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


def app_figures(cp: ControlPlane, org_id: str, app: App) -> list[MachineFigures]:
    now = time.time()
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
            )
        )
    return out
