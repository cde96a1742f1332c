"""What the control plane shows Prometheus at scrape time: certificates' days to expiry,
and when each organization's (and the server's own) last backup succeeded.

Read from the store when Prometheus asks, so the figure is right after a
restart and for certificates another replica renewed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from hangar.store.db import Database
from hangar.store.tables import App, BackupRepoRow, Certificate, Setting

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
        yield from self._backups()

    def _backups(self) -> Iterator[Metric]:
        orgs = GaugeMetricFamily(
            "hangar_backup_last_success_timestamp_seconds",
            "When the organization's last backup succeeded (Unix time); until its first,"
            " when its repository was set, so a repository never backed up to alerts too.",
            labels=["org"],
        )
        server = GaugeMetricFamily(
            "hangar_server_backup_last_success_timestamp_seconds",
            "When `hangar server backup` last succeeded (Unix time).",
        )
        try:
            with self.db.read() as session:
                rows = session.execute(
                    select(
                        BackupRepoRow.org_id,
                        BackupRepoRow.last_success_at,
                        BackupRepoRow.created_at,
                    )
                ).all()
                setting = session.get(Setting, "server_backup")
                last_server = json.loads(setting.value)["last_success_at"] if setting else None
        except SQLAlchemyError as exc:
            log.warning("backup metrics: %s", exc)
            rows, last_server = [], None
        for org_id, success, created in rows:
            orgs.add_metric([org_id], (success or created).timestamp())
        if last_server is not None:
            server.add_metric([], dt.datetime.fromisoformat(last_server).timestamp())
        yield orgs
        yield server
