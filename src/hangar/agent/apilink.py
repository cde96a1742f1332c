"""A joined host's link to the control plane: the agents' API over mutual TLS.

``ApiLink`` implements ``hangar.contract.links.ControlPlaneLink``: it
long-polls the host's assignments, reports observations with the machines'
output (``LogShipper``), fetches the images its machines need (verifying
every blob against the digest the release pinned), opens secrets and edge
keys sealed to one-time keys, runs relayed commands, and renews its
certificate once two thirds of its lifetime have passed.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from hangar.agent.join import Identity, problem, tls_context
from hangar.agent.runtimes.base import Runtime
from hangar.contract import VERSION, check_version
from hangar.contract.assignments import Assignment, MachineStatus
from hangar.contract.execs import MAX_OUTPUT, ExecOrder
from hangar.contract.mesh import Peer
from hangar.contract.names import Record
from hangar.contract.volumejobs import VolumeJob, VolumeJobResult
from hangar.contract.volumes import HostVolume
from hangar.crypto.hostcert import certificate_window, csr_for, new_host_key
from hangar.crypto.secretbox import Opener
from hangar.crypto.volumekeys import open_sealed_keys
from hangar.domain.routing import RoutingTable, edge_seal_context
from hangar.errors import HangarError, IntegrityError
from hangar.hostfs import write_private
from hangar.images.oci import receive_blob, write_index
from hangar.telemetry.logfiles import read_since

__all__ = ["RENEW_AT", "ApiLink", "LogShipper"]

log = logging.getLogger("hangar.agent")

RENEW_AT = 2 / 3  # of a certificate's lifetime
ACCESS = "access/"  # the edge's access logs' cursors, among the machines' ones
# Bytes of one app's access lines per report, so every app moves; well under
# the contract's MAX_ACCESS_LINES lines even of the shortest lines.
ACCESS_BUDGET = 64 << 10
_APP = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class LogShipper:
    """Machines' output, and the edge's access lines, sent up with each report from where
    the last one left off.

    Cursors are saved only after the control plane took the lines, so a
    crash resends rather than loses (a line may arrive twice, never not).
    The edge's lines are the files under ``access_dir`` (``<app>.log``, see
    ``hangar.edge.accesslog``), cursors keyed ``access/<app>``.
    """

    BUDGET = 256 << 10  # bytes of log per report, well under the API's body cap

    def __init__(self, runtime: Runtime, path: Path, access_dir: Path | None = None) -> None:
        self.runtime = runtime
        self.path = path
        self.access_dir = access_dir
        self.cursors: dict[str, dict[str, int]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )
        self._pending: dict[str, dict[str, int]] = {}
        self._budget = self.BUDGET
        self.backlog = False

    def collect(self, machine_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        shipped: dict[str, list[dict[str, Any]]] = {}
        self._pending = {}
        budget = self.BUDGET
        self.backlog = False
        for machine_id in machine_ids:
            log_file = self.runtime.log_path(machine_id)
            if not log_file.parent.exists():
                continue
            if budget <= 0:
                self.backlog = True
                break
            records, cursor = read_since(log_file, self.cursors.get(machine_id), budget)
            if records:
                shipped[machine_id] = records
                budget -= sum(len(str(r.get("line", ""))) + 80 for r in records)
            if cursor is not None:
                self._pending[machine_id] = cursor
        self._budget = budget
        return shipped

    def collect_access(self) -> dict[str, list[dict[str, Any]]]:
        """The edge's new access lines by app, within what ``collect`` left of the budget."""
        shipped: dict[str, list[dict[str, Any]]] = {}
        if self.access_dir is None or not self.access_dir.is_dir():
            return shipped
        budget = self._budget
        for app in self._access_apps():
            if budget <= 0:
                self.backlog = True
                break
            key = ACCESS + app
            records, cursor = read_since(
                self.access_dir / f"{app}.log", self.cursors.get(key), min(budget, ACCESS_BUDGET)
            )
            if records:
                shipped[app] = [
                    {"ts": r["ts"], "stream": "access", "line": str(r.get("line", ""))}
                    for r in records
                ]
                budget -= sum(len(str(r.get("line", ""))) + 80 for r in records)
            if cursor is not None:
                self._pending[key] = cursor
        self._budget = budget
        return shipped

    def _access_apps(self) -> list[str]:
        assert self.access_dir is not None
        names = {p.name.split(".", 1)[0] for p in self.access_dir.iterdir()}
        return sorted(n for n in names if _APP.fullmatch(n))

    def commit(self, present: list[str]) -> None:
        self.cursors.update(self._pending)
        apps = (
            set(self._access_apps())
            if self.access_dir is not None and self.access_dir.is_dir()
            else set()
        )
        self.cursors = {
            k: v
            for k, v in self.cursors.items()
            if k in present or (k.startswith(ACCESS) and k[len(ACCESS) :] in apps)
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cursors))
        os.replace(tmp, self.path)


class ApiLink:
    """The ``Link`` of a joined host: the agents' API over mutual TLS."""

    def __init__(
        self,
        identity: Identity,
        *,
        layouts: Path,
        shipper: LogShipper | None = None,
        runtime: Runtime | None = None,
        timeout: float = 30,
    ) -> None:
        self.identity = identity
        self.layouts = layouts
        self.shipper = shipper
        self.runtime = runtime
        self.timeout = timeout
        self.version: str | None = None
        self._http = self._client()

    def _client(self) -> httpx.Client:
        ident = self.identity
        return httpx.Client(
            base_url=ident.agent_url,
            verify=tls_context(ident.ca_file, (ident.cert_file, ident.key_file)),
            timeout=self.timeout,
            headers={"User-Agent": f"hangar-agent/{ident.name}"},
        )

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            where = self.identity.agent_url
            raise HangarError(f"cannot reach the control plane at {where}: {exc}") from exc
        if response.status_code >= 400:
            raise problem(response)
        return response

    def assignments(self, wait: float) -> list[Assignment]:
        params: dict[str, Any] = {"wait": round(wait, 3)}
        if self.version is not None:
            params["after"] = self.version
        response = self._call(
            "GET", "/agent/v1/assignments", params=params, timeout=self.timeout + wait
        )
        body = response.json()
        check_version(body.get("contract"))
        self.version = str(body["version"])
        for order in body.get("execs", []):
            exec_order = ExecOrder(**order)
            threading.Thread(
                target=self._exec, args=(exec_order,), name=f"exec-{exec_order.id}", daemon=True
            ).start()
        return [Assignment.from_json(a) for a in body["assignments"]]

    def _exec(self, order: ExecOrder) -> None:
        """Run a command the control plane relayed, in one of this host's machines."""
        answer: dict[str, Any]
        try:
            if self.runtime is None:
                raise HangarError("this agent does not run commands")
            if order.machine_id not in self.runtime.list():
                raise HangarError(f"machine {order.machine_id} is not on this host")
            result = self.runtime.exec(order.machine_id, list(order.cmd), timeout=order.timeout)
            answer = {
                "exit_code": result.exit_code,
                "stdout": base64.b64encode(result.stdout[:MAX_OUTPUT]).decode(),
                "stderr": base64.b64encode(result.stderr[:MAX_OUTPUT]).decode(),
            }
        except HangarError as exc:
            answer = {"error": exc.message[:4000]}
        except Exception:
            # Neither the exception (it may quote the command) nor a traceback.
            answer = {"error": f"the agent could not run the command in {order.machine_id}"}
        try:
            self._call("POST", f"/agent/v1/execs/{order.id}", json=answer)
        except HangarError as exc:
            log.warning("could not return the result of %s: %s", order.id, exc.message)

    def report(self, statuses: Mapping[str, MachineStatus], errors: Mapping[str, str]) -> None:
        ids = sorted(statuses)
        logs = self.shipper.collect(ids) if self.shipper is not None else {}
        access = self.shipper.collect_access() if self.shipper is not None else {}
        machines = {machine_id: status.to_json() for machine_id, status in statuses.items()}
        body = {"machines": machines, "errors": errors, "logs": logs, "access": access}
        self._call("POST", "/agent/v1/report", json={"contract": VERSION, **body})
        if self.shipper is not None:
            self.shipper.commit(ids)

    def image(self, want: Assignment) -> str:
        """The machine's image as a local layout, fetched blob by blob and verified."""
        body = self._call("GET", f"/agent/v1/machines/{want.machine_id}/image").json()
        manifest = body["manifest"]
        if want.image_digest is not None and manifest["digest"] != want.image_digest:
            raise IntegrityError(
                f"the control plane offered {manifest['digest']}, not the pinned"
                f" {want.image_digest}"
            )
        layout = self.layouts / str(manifest["digest"]).replace(":", "-")
        for digest, size in body["blobs"].items():
            path = f"/agent/v1/machines/{want.machine_id}/image/blobs/{digest}"
            try:
                with self._http.stream("GET", path, timeout=600) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise problem(response)
                    receive_blob(layout, digest, int(size), response.iter_bytes())
            except httpx.HTTPError as exc:
                raise HangarError(f"fetching blob {digest} failed: {exc}") from exc
        write_index(layout, manifest)
        return f"oci:{layout}"

    def routes(self) -> RoutingTable:
        """The routing table for this edge host, its keys opened from their seal."""
        opener = Opener()
        body = self._call(
            "POST", "/agent/v1/routes", json={"public_key": opener.public_b64()}
        ).json()
        keys = opener.open(body["keys"], edge_seal_context(self.identity.host_id))
        table = RoutingTable.from_json(body["table"])
        certs = tuple(replace(c, key_pem=keys.get(c.hostname, "")) for c in table.certs)
        # This host forwards ACME challenges to the public API it knows.
        api = urlsplit(self.identity.api_url)
        port = api.port or 443
        host = api.hostname or "localhost"
        responder = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return replace(table, certs=certs, acme_responder=responder)

    def register_mesh(self, public_key: str, endpoint: str) -> None:
        self._call("PUT", "/agent/v1/mesh", json={"public_key": public_key, "endpoint": endpoint})

    def names(self) -> list[Record]:
        return [
            Record(n["app"], n["region"], n["machine_id"], ipaddress.IPv6Address(n["address"]))
            for n in self._call("GET", "/agent/v1/names").json()
        ]

    def report_mesh(self, latest_handshake: int) -> None:
        self._call("PUT", "/agent/v1/mesh/status", json={"latest_handshake": latest_handshake})

    def report_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        """Sent in batches of about 512 KiB, under the API's cap on a request body."""
        batch: dict[str, dict[str, Any]] = {}
        size = 0
        for machine_id, (at, text) in figures.items():
            if batch and size + len(text) > 512 << 10:
                self._call("POST", "/agent/v1/metrics", json={"machines": batch})
                batch, size = {}, 0
            batch[machine_id] = {"at": at, "text": text}
            size += len(text) + 100
        if batch:
            self._call("POST", "/agent/v1/metrics", json={"machines": batch})

    def report_edge_metrics(self, figures: Mapping[str, tuple[float, str]]) -> None:
        """A few figures per app, sent in one request (well under the API's cap)."""
        edge = {app: {"at": at, "text": text} for app, (at, text) in figures.items()}
        self._call("POST", "/agent/v1/metrics", json={"machines": {}, "edge": edge})

    def peers(self) -> list[Peer]:
        return [
            Peer(p["host"], p["public_key"], p["endpoint"], tuple(p["allowed_ips"]))
            for p in self._call("GET", "/agent/v1/mesh/peers").json()
        ]

    def secrets(self, want: Assignment) -> dict[str, str]:
        """The starting machine's secrets, sealed to a key made for this one request."""
        opener = Opener()
        sealed = self._call(
            "POST",
            f"/agent/v1/machines/{want.machine_id}/secrets",
            json={"public_key": opener.public_b64()},
        ).json()
        return opener.open(sealed, want.machine_id)

    def volume_keys(self, want: Assignment) -> dict[str, bytes]:
        """The starting machine's volume keys, sealed to a key made for this one request."""
        opener = Opener()
        sealed = self._call(
            "POST",
            f"/agent/v1/machines/{want.machine_id}/volume-keys",
            json={"public_key": opener.public_b64()},
        ).json()
        return open_sealed_keys(opener, sealed, want.machine_id)

    def volumes(self, backend: str, grows_online: bool) -> list[HostVolume]:
        params = {"backend": backend, "grows_online": "true" if grows_online else "false"}
        found = self._call("GET", "/agent/v1/volumes", params=params).json()
        return [HostVolume.from_json(v) for v in found]

    def volume_jobs(self, recipient: str) -> list[tuple[VolumeJob, dict[str, str] | None]]:
        found = self._call(
            "POST", "/agent/v1/volume-jobs/take", json={"public_key": recipient}
        ).json()
        return [(VolumeJob.from_json(j["job"]), j.get("sealed")) for j in found]

    def volume_job_done(self, done: VolumeJobResult) -> None:
        self._call("POST", f"/agent/v1/volume-jobs/{done.job_id}/done", json=done.to_json())

    def volume_export(self, job_id: str, chunks: Iterator[bytes]) -> None:
        self._call(
            "POST",
            f"/agent/v1/volume-jobs/{job_id}/export",
            content=chunks,
            headers={"Content-Type": "application/x-tar"},
        )

    def renew_if_due(self, now: dt.datetime | None = None) -> bool:
        """Renew the certificate once two thirds of its lifetime have passed."""
        now = now or dt.datetime.now(dt.UTC)
        start, end = certificate_window(self.identity.cert_file.read_bytes())
        if now < start + (end - start) * RENEW_AT:
            return False
        key_pem = new_host_key()
        body = self._call(
            "POST",
            "/agent/v1/renew",
            json={"csr": csr_for(key_pem, self.identity.name).decode()},
        ).json()
        directory = self.identity.directory
        write_private(directory / "host.key.new", key_pem)
        (directory / "host.crt.new").write_text(body["certificate"])
        os.replace(directory / "host.key.new", directory / "host.key")
        os.replace(directory / "host.crt.new", directory / "host.crt")
        self._http.close()
        self._http = self._client()
        log.info("renewed this host's certificate; it expires %s", body["expires_at"])
        return True
