"""What the control plane shows Prometheus at scrape time: certificates' days to expiry.

Read from the store when Prometheus asks, so the figure is right after a
restart and for certificates another replica renewed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from hangar.store.db import Database
from hangar.store.tables import App, Certificate

__all__ = ["ControlPlaneCollector"]

log = logging.getLogger("hangar.controlplane")


class ControlPlaneCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "hangar_certificate_expiry_days",
            "Days until an edge certificate expires (negative once it has).",
            labels=["org", "app", "hostname"],
        )
        now = dt.datetime.now(dt.UTC)
        try:
            with self.db.read() as session:
                rows = session.execute(
                    select(App.org_id, App.name, Certificate.hostname, Certificate.not_after)
                    .join(App, App.id == Certificate.app_id)
                    .where(Certificate.not_after.is_not(None), Certificate.status == "valid")
                ).all()
        except SQLAlchemyError as exc:
            log.warning("certificate metrics: %s", exc)
            rows = []
        for org_id, app, hostname, not_after in rows:
            if not_after is None:
                continue
            expiry.add_metric([org_id, app, hostname], (not_after - now).total_seconds() / 86400)
        yield expiry
