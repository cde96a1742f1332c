"""The agent of a host other than the control plane's: it joins, then talks mTLS.

``join`` trades a one-time join token for a client certificate: it fetches
the installation's CA certificate and accepts it only if its fingerprint is
the one the token pins, makes a key on this host, and sends only a
certificate request. The identity (key, certificate, CA, ids) lives under
``<agent dir>/identity``, 0700, key 0600.

``ApiLink`` is the agent's ``Link`` over mutual TLS: it long-polls the
host's assignments, reports observations, fetches the images its machines
need (verifying every blob against the digest the release pinned) and renews
its certificate once two thirds of its lifetime have passed.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from hangar.agent.logfiles import read_since
from hangar.agent.reconciler import Assignment, Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import Agent, host_memory_mb
from hangar.crypto.hostcert import certificate_window, csr_for, new_host_key, pin_matches
from hangar.crypto.secretbox import Opener
from hangar.domain.jointoken import parse_join_token
from hangar.domain.routing import RoutingTable, edge_seal_context
from hangar.edge.haproxy import Edge, EdgeConfig
from hangar.errors import ApiError, ConfigError, HangarError, IntegrityError
from hangar.hostfs import write_private
from hangar.images.oci import ImageRef, receive_blob, write_index
from hangar.images.store import ImageStore
from hangar.net.dns import Record
from hangar.net.nftables import Firewall
from hangar.net.wireguard import Mesh, Peer, validate_endpoint

__all__ = ["ApiLink", "Identity", "join", "run_agent"]

log = logging.getLogger("hangar.agent")

RENEW_AT = 2 / 3  # of a certificate's lifetime


@dataclass(frozen=True)
class Identity:
    """Who this host is to the control plane, and where to reach it."""

    directory: Path
    host_id: str
    name: str
    region: str
    api_url: str
    agent_url: str

    @property
    def key_file(self) -> Path:
        return self.directory / "host.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "host.crt"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def load(cls, agent_dir: Path) -> Identity | None:
        path = agent_dir / "identity" / "agent.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(directory=agent_dir / "identity", **data)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "directory"}
        tmp = self.directory / "agent.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.directory / "agent.json")


def _problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        detail, hint = str(body.get("detail") or body.get("title")), body.get("hint")
    except ValueError:
        detail, hint = f"{response.status_code} {response.reason_phrase}", None
    return ApiError(response.status_code, detail, hint=hint)


def _tls(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _agent_url(api_url: str, port: int) -> str:
    parts = urlsplit(api_url)
    host = parts.hostname or "localhost"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(("https", netloc, "", "", ""))


def join(api_url: str, token: str, agent_dir: Path, *, name: str, timeout: float = 30) -> Identity:
    """Join the installation at ``api_url`` with a one-time ``token``."""
    parsed = parse_join_token(token)
    api_url = api_url.rstrip("/")
    if urlsplit(api_url).scheme != "https":
        raise ConfigError(f"--api must be an https:// URL, not {api_url!r}")
    directory = agent_dir / "identity"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    try:
        # The CA is not trusted yet: it is fetched unverified and accepted
        # only if it is the one the token pins.
        with httpx.Client(verify=False, timeout=timeout) as plain:  # noqa: S501 - pinned below
            response = plain.get(f"{api_url}/v1/ca")
        if response.status_code != 200:
            raise _problem(response)
        ca_pem = str(response.json()["certificate"]).encode()
        pin_matches(ca_pem, parsed.pin)
        (directory / "ca.crt").write_bytes(ca_pem)
        key_pem = new_host_key()
        with httpx.Client(verify=_tls(directory / "ca.crt"), timeout=timeout) as client:
            response = client.post(
                f"{api_url}/v1/hosts/join",
                json={
                    "token": token,
                    "csr": csr_for(key_pem, name).decode(),
                    "name": name,
                    "memory_mb": host_memory_mb(),
                },
            )
    except httpx.HTTPError as exc:
        raise HangarError(
            f"cannot reach the Hangar API at {api_url}: {exc}", hint="check --api"
        ) from exc
    if response.status_code != 201:
        raise _problem(response)
    body = response.json()
    write_private(directory / "host.key", key_pem)
    (directory / "host.crt").write_text(body["certificate"])
    identity = Identity(
        directory=directory,
        host_id=body["host_id"],
        name=body["name"],
        region=body["region"],
        api_url=api_url,
        agent_url=_agent_url(api_url, int(body["agent_port"])),
    )
    identity.save()
    return identity


class LogShipper:
    """Machines' output, sent up with each report from where the last one left off.

    Cursors are saved only after the control plane took the lines, so a
    crash resends rather than loses (a line may arrive twice, never not).
    """

    BUDGET = 256 << 10  # bytes of log per report, well under the API's body cap

    def __init__(self, runtime: RuncRuntime, path: Path) -> None:
        self.runtime = runtime
        self.path = path
        self.cursors: dict[str, dict[str, int]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )
        self._pending: dict[str, dict[str, int]] = {}
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
        return shipped

    def commit(self, present: list[str]) -> None:
        self.cursors.update(self._pending)
        self.cursors = {k: v for k, v in self.cursors.items() if k in present}
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
        runtime: RuncRuntime | None = None,
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
            verify=_tls(ident.ca_file, (ident.cert_file, ident.key_file)),
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
            raise _problem(response)
        return response

    def assignments(self, wait: float) -> list[Assignment]:
        params: dict[str, Any] = {"wait": round(wait, 3)}
        if self.version is not None:
            params["after"] = self.version
        response = self._call(
            "GET", "/agent/v1/assignments", params=params, timeout=self.timeout + wait
        )
        body = response.json()
        self.version = str(body["version"])
        for order in body.get("execs", []):
            threading.Thread(
                target=self._exec, args=(order,), name=f"exec-{order['id']}", daemon=True
            ).start()
        return [Assignment.from_json(a) for a in body["assignments"]]

    def _exec(self, order: dict[str, Any]) -> None:
        """Run a command the control plane relayed, in one of this host's machines."""
        cap = 256 << 10  # each stream; the answer must fit the API's body cap
        answer: dict[str, Any]
        try:
            if self.runtime is None:
                raise HangarError("this agent does not run commands")
            if order["machine_id"] not in self.runtime.list():
                raise HangarError(f"machine {order['machine_id']} is not on this host")
            result = self.runtime.exec(
                order["machine_id"], list(order["cmd"]), timeout=float(order["timeout"])
            )
            answer = {
                "exit_code": result.exit_code,
                "stdout": base64.b64encode(result.stdout[:cap]).decode(),
                "stderr": base64.b64encode(result.stderr[:cap]).decode(),
            }
        except HangarError as exc:
            answer = {"error": exc.message[:4000]}
        try:
            self._call("POST", f"/agent/v1/execs/{order['id']}", json=answer)
        except HangarError as exc:
            log.warning("could not return the result of %s: %s", order["id"], exc.message)

    def report(self, infos: Mapping[str, Mapping[str, Any]], errors: Mapping[str, str]) -> None:
        ids = sorted(infos)
        logs = self.shipper.collect(ids) if self.shipper is not None else {}
        self._call(
            "POST", "/agent/v1/report", json={"machines": infos, "errors": errors, "logs": logs}
        )
        if self.shipper is not None:
            self.shipper.commit(ids)

    def fetch_image(self, want: Assignment) -> ImageRef:
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
                        raise _problem(response)
                    receive_blob(layout, digest, int(size), response.iter_bytes())
            except httpx.HTTPError as exc:
                raise HangarError(f"fetching blob {digest} failed: {exc}") from exc
        write_index(layout, manifest)
        return ImageRef("oci", path=layout)

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

    def dns_records(self) -> list[Record]:
        return [
            Record(n["app"], n["region"], n["machine_id"], ipaddress.IPv6Address(n["address"]))
            for n in self._call("GET", "/agent/v1/names").json()
        ]

    def report_mesh(self, latest_handshake: int) -> None:
        self._call("PUT", "/agent/v1/mesh/status", json={"latest_handshake": latest_handshake})

    def mesh_peers(self) -> list[Peer]:
        return [
            Peer(p["host"], p["public_key"], p["endpoint"], tuple(p["allowed_ips"]))
            for p in self._call("GET", "/agent/v1/mesh/peers").json()
        ]

    def fetch_secrets(self, want: Assignment) -> dict[str, str]:
        """The starting machine's secrets, sealed to a key made for this one request."""
        opener = Opener()
        sealed = self._call(
            "POST",
            f"/agent/v1/machines/{want.machine_id}/secrets",
            json={"public_key": opener.public_b64()},
        ).json()
        return opener.open(sealed, want.machine_id)

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


def run_agent(
    identity: Identity,
    agent_dir: Path,
    *,
    poll_seconds: float = 2.0,
    stop: threading.Event | None = None,
    edge: EdgeConfig | None = None,
    firewall: bool = True,
    mesh_endpoint: str | None = None,
    mesh_port: int = 51820,
    dns: bool = True,
) -> int:
    """Run this host's machines until SIGTERM/SIGINT (machines keep running after)."""
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    os.chmod(agent_dir, 0o711)  # noqa: S103 - search-only: machines reach their images through it
    layouts = agent_dir / "layouts"
    layouts.mkdir(mode=0o700, exist_ok=True)
    runtime = RuncRuntime(agent_dir / "state", agent_dir / "bundles")
    shipper = LogShipper(runtime, agent_dir / "state" / "log-cursors.json")
    link = ApiLink(identity, layouts=layouts, shipper=shipper, runtime=runtime)
    reconciler = Reconciler(
        runtime,
        ImageStore(agent_dir / "images"),
        agent_dir / "state",
        image_source=link.fetch_image,
        secret_source=link.fetch_secrets,
    )
    mesh = None
    if mesh_endpoint is not None:
        validate_endpoint(mesh_endpoint)
        mesh = Mesh(identity.host_id, agent_dir / "identity", listen_port=mesh_port)
    registered = mesh is None
    if edge is not None:
        api_host = urlsplit(identity.api_url).hostname or "localhost"
        edge = replace(
            edge,
            directory=agent_dir / "edge",
            acme_ca_file=identity.ca_file,
            acme_verify_name=api_host,
        )
    agent = Agent(
        link,
        reconciler,
        identity.host_id,
        edge=Edge(edge) if edge is not None else None,
        routes=link.routes if edge is not None else None,
        firewall=Firewall(agent_dir / "state" / "nftables") if firewall else None,
        mesh=mesh,
        mesh_peers=link.mesh_peers if mesh is not None else None,
        mesh_report=link.report_mesh if mesh is not None else None,
        dns_records=link.dns_records if dns else None,
    )
    log.info(
        "agent for host %s (%s) talking to %s", identity.name, identity.host_id, identity.agent_url
    )
    due: float | None = None
    backoff = 1.0
    try:
        while not stop.is_set():
            try:
                link.renew_if_due()
                if not registered and mesh is not None and mesh_endpoint is not None:
                    link.register_mesh(mesh.public_key(), mesh_endpoint)
                    registered = True
                now = time.time()
                wait = poll_seconds if due is None else max(0.0, min(poll_seconds, due - now))
                due = agent.tick(now, wait)
                if shipper.backlog:
                    due = time.time()  # more output waiting to be sent: go again now
                backoff = 1.0
            except ApiError as exc:
                if exc.status == 403:
                    log.error("the control plane no longer accepts this host: %s", exc.message)
                    return 3
                log.warning("control plane refused: %s; retrying in %.0fs", exc.message, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except HangarError as exc:
                log.warning("%s; retrying in %.0fs", exc.message, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        link.close()
    log.info("agent stopped; machines keep running and are adopted on the next start")
    return 0
