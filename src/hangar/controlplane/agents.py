"""What the control plane does for one host's agent: the server half of the contract.

``AgentService(cp, host_id, ctx)`` answers everything an agent asks
(``hangar.contract.links.ControlPlaneLink``): its assignments, its report,
the secrets of a machine it starts, the image of a machine it runs, the
routing table (edge hosts only), DNS names, mesh peers. Each call owns its
transaction and, where it changes something, its audit event and the
loops' wake-up. The agents' mutual-TLS API calls it for joined hosts; the
all-in-one server's in-process link calls it for its own host. Both hosts
are therefore served by the same code, and each can see or change only its
own machines.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import select

from hangar.audit.log import AuditContext
from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.mesh import Peer
from hangar.contract.names import Record
from hangar.contract.reports import without_query
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.contract.volumes import HostVolume
from hangar.controlplane.appmetrics import receive, receive_edge
from hangar.controlplane.changes import change, record_refusal
from hangar.controlplane.hostlink import apply_report, dns_records, host_assignments
from hangar.controlplane.hosts import renew_host_cert
from hangar.controlplane.images import machine_layout
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.mesh import mesh_peers, register_mesh
from hangar.controlplane.secrets import deliver
from hangar.controlplane.state import ControlPlane
from hangar.controlplane.volumejobs import check_export, finish, take_jobs
from hangar.controlplane.volumes import deliver_keys, host_volumes, report_backend
from hangar.crypto.peercert import IssuedCert
from hangar.domain.routing import RoutingTable
from hangar.errors import NotFound, PermissionDenied, audited
from hangar.images.oci import ImageRef
from hangar.store.tables import App, Host, Machine

__all__ = ["AgentService"]

log = logging.getLogger("hangar.controlplane")


class AgentService:
    """The control plane, as one host sees it."""

    def __init__(self, cp: ControlPlane, host_id: str, ctx: AuditContext) -> None:
        self.cp = cp
        self.host_id = host_id
        self.ctx = ctx

    def _host(self) -> Host:
        with self.cp.db.read() as session:
            host = session.get(Host, self.host_id)
            if host is None:
                raise NotFound(f"host {self.host_id} is not part of this installation")
            return host

    def assignments(self) -> list[Assignment]:
        with self.cp.db.read() as session:
            return host_assignments(session, self.host_id)

    def report(
        self,
        statuses: Mapping[str, MachineStatus],
        errors: Mapping[str, str],
        logs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        access: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Record what the host saw; its machines' output first (only its own machines),
        and its edge's access lines (only of apps its edge serves: see ``_keep_access``)."""
        if access:
            self._keep_access(access)
        if logs:
            # Logs first: a report can delete a destroyed machine, and its last lines count.
            with self.cp.db.read() as session:
                mine = set(
                    session.execute(
                        select(Machine.id).where(
                            Machine.id.in_(list(logs)), Machine.host_id == self.host_id
                        )
                    ).scalars()
                )
            store = LogStore(self.cp.data_dir / "logs")
            for machine_id in sorted(mine):  # others' machines are dropped
                store.append(machine_id, logs[machine_id])
        infos = {machine_id: status.to_json() for machine_id, status in statuses.items()}
        with self.cp.db.write() as session:
            apply_report(session, self.host_id, infos, errors)
        self.cp.wake()  # the deployer may be waiting on these machines

    def _keep_access(self, access: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Keep the access lines of apps this host's edge serves, under the app's id.

        A host not joined as an edge serves no app: its lines are refused
        (audited). Lines of an app the routing table does not give this edge
        (another organization's app that it does not route, a name no app
        holds, an app whose service was just removed) are dropped, so a host
        cannot write into the access log of an app it does not serve. Query
        strings are cut again whatever the host sent.
        """
        cp = self.cp
        try:
            host = self._edge_host("edge.access")
        except PermissionDenied:
            log.warning("host %s sent access lines but is not an edge host", self.host_id)
            return
        with cp.db.read() as session:
            served = {route.app for route in cp.routes.build(session).http}
            wanted = [name for name in access if name in served]
            apps = dict(session.execute(select(App.name, App.id).where(App.name.in_(wanted))).all())
        dropped = sorted(set(access) - set(apps))
        if dropped:
            log.warning(
                "host %s sent access lines of apps it does not serve: %s", host.name, dropped
            )
        store = LogStore(cp.data_dir / "logs")
        for name, app_id in sorted(apps.items()):
            store.append_access(
                app_id,
                self.host_id,
                (
                    {"ts": r["ts"], "stream": "access", "line": without_query(str(r["line"]))}
                    for r in access[name]
                ),
            )

    def secrets(self, machine_id: str) -> dict[str, str]:
        cp = self.cp
        return deliver(
            cp.db, cp.keyring, cp.audit, self.ctx, host_id=self.host_id, machine_id=machine_id
        )

    def volume_keys(self, machine_id: str) -> dict[str, bytes]:
        """The keys of the volumes a machine starting on this host holds (audited)."""
        return deliver_keys(self.cp, self.ctx, host_id=self.host_id, machine_id=machine_id)

    def volumes(self, backend: str, grows_online: bool) -> list[HostVolume]:
        """The volumes that live on this host; records the backend it reports."""
        with self.cp.db.read() as session:
            host = session.get(Host, self.host_id)
            known = (host.volume_backend, host.volume_grows_online) if host else None
        if known != (backend, grows_online):
            with self.cp.db.write() as session:
                report_backend(session, self.host_id, backend, grows_online)
        with self.cp.db.read() as session:
            return host_volumes(session, self.host_id)

    def volume_jobs(self, recipient: str) -> list[tuple[VolumeJob, dict[str, str] | None]]:
        """This host's pending volume jobs, taken (their repository sealed to ``recipient``)."""
        return take_jobs(self.cp, self.ctx, self.host_id, recipient)

    def volume_export_start(self, job_id: str) -> None:
        """Begin the upload of an export job this host runs (refused for any other)."""
        check_export(self.cp, self.host_id, job_id)
        self.cp.exports.start(job_id)

    def volume_export(self, job_id: str, chunks: Iterator[bytes]) -> None:
        """An export job's tar, relayed to the person who asked."""
        check_export(self.cp, self.host_id, job_id)
        self.cp.exports.upload(job_id, chunks)

    def volume_job_done(self, done: VolumeJobResult) -> None:
        """What this host did of a job it took (audited)."""
        finish(self.cp, self.ctx, self.host_id, done)

    def image(self, machine_id: str) -> tuple[ImageRef, str | None]:
        """A machine's image layout and the digest its release pinned (own machines only).

        The layout is in the machine's organization's image store, or refused.
        """
        with self.cp.db.read() as session:
            found = [
                a for a in host_assignments(session, self.host_id) if a.machine_id == machine_id
            ]
            machine = session.get(Machine, machine_id) if found else None
            app = session.get(App, machine.app_id) if machine is not None else None
        # Hosts see only their own machines; others' are "not found", as on the public API.
        if not found or app is None:
            raise NotFound(f"machine {machine_id!r} is not assigned to this host")
        return machine_layout(self.cp, app.org_id, found[0].image), found[0].image_digest

    def _edge_host(self, action: str) -> Host:
        """This host, if it was joined as an edge; else PermissionDenied, the attempt audited.

        Only edge hosts hold tenants' TLS keys and write access lines: a machine
        host asking is suspect.
        """
        host = self._host()
        if not host.edge:
            record_refusal(
                self.cp,
                self.ctx,
                org_id=None,
                action=action,
                target=host.name,
                reason="not an edge host",
            )
            raise audited(
                PermissionDenied(
                    f"host {host.name} is not an edge host",
                    hint="join it with a token from `hangar hosts join-token --edge`",
                )
            )
        return host

    def routes(self) -> RoutingTable:
        """The edge's routing table, keys included; only for hosts joined as edges."""
        self._edge_host("edge.routes")
        with self.cp.db.read() as session:
            return self.cp.routes.build(session)

    def names(self) -> list[Record]:
        with self.cp.db.read() as session:
            return dns_records(session)

    def peers(self) -> list[Peer]:
        with self.cp.db.read() as session:
            return mesh_peers(session, self.host_id)

    def register_mesh(self, public_key: str, endpoint: str) -> None:
        cp = self.cp
        with cp.db.write() as session:
            host = session.get(Host, self.host_id)
            if host is None:
                raise NotFound(f"host {self.host_id} is not part of this installation")
            if register_mesh(session, host, public_key, endpoint):
                cp.audit.record(
                    session,
                    self.ctx,
                    org_id=None,
                    action="host.mesh",
                    target=host.name,
                    detail={"public_key": public_key, "endpoint": endpoint},
                )
        cp.wake()

    def report_mesh(self, latest_handshake: int) -> None:
        with self.cp.db.write() as session:
            host = session.get(Host, self.host_id)
            if host is not None:
                host.mesh_handshake_at = (
                    dt.datetime.fromtimestamp(latest_handshake, dt.UTC)
                    if latest_handshake
                    else None
                )

    def report_metrics(self, figures: Mapping[str, tuple[float, str]]) -> int:
        """Keep this host's machines' figures for their organizations; how many were kept."""
        return receive(self.cp, self.host_id, figures)

    def report_edge_metrics(self, figures: Mapping[str, tuple[float, str]]) -> int:
        """Keep the apps' figures at this edge host for their organizations; how many were kept."""
        return receive_edge(self.cp, self.host_id, figures)

    def renew(self, csr_pem: str) -> IssuedCert:
        """A new client certificate for this host, audited."""
        cp = self.cp
        lifetime = dt.timedelta(seconds=cp.settings.host_cert_seconds)
        with change(cp, self.ctx, org_id=None, action="host.renew", wake=False) as (session, event):
            issued = renew_host_cert(session, cp.ca, self.host_id, csr_pem, lifetime=lifetime)
            host = session.get(Host, self.host_id)
            event.target = host.name if host is not None else self.host_id
            event.detail = {"serial": issued.serial, "expires_at": issued.expires_at.isoformat()}
        return issued
