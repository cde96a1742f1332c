"""Hosts: operators list and cordon them; a cordoned host gets no new machines."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_agent_app
from hangar.api.guard import PEER_CERT_SCOPE_KEY
from hangar.controlplane.machines import register_local_host
from hangar.controlplane.state import ControlPlane
from hangar.crypto.hostcert import csr_for, new_host_key
from hangar.crypto.peercert import host_id_of
from hangar.images.oci import build_layout, layer_tar
from hangar.store.tables import AuditEvent, JoinToken
from tests.conftest import Installation, bearer, mint_token
from tests.uploads import upload_layout


def test_cordon_keeps_new_machines_off_a_host(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    assert [x["name"] for x in api.get("/v1/hosts", headers=h).json()] == ["h1"]
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    one_off = {"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]}

    cordoned = api.post("/v1/hosts/h1/cordon", headers=h)
    assert cordoned.status_code == 200 and cordoned.json()["state"] == "cordoned"
    refused = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert refused.status_code == 409 and "no active host" in refused.json()["detail"]

    assert api.post("/v1/hosts/h1/uncordon", headers=h).json()["state"] == "active"
    made = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert made.status_code == 201 and made.json()["one_off"] is True
    assert api.get("/v1/hosts/h1", headers=h).json()["machines"] == 1
    assert api.get("/v1/hosts/nope", headers=h).status_code == 404


def test_hosts_are_for_operators(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "m@example.com", "role": "admin"})
    org_admin = bearer(mint_token(control_plane, "m@example.com", kind="org", org="acme"))
    assert api.get("/v1/hosts", headers=org_admin).status_code == 403
    org_token = api.post("/v1/tokens", headers=h, json={"kind": "org", "org": "acme"}).json()
    # Even the operator's own token, narrowed to one organization, may not.
    assert api.get("/v1/hosts", headers=bearer(org_token["token"])).status_code == 403
    assert api.get("/v1/hosts").status_code == 401


# Joining: one-time tokens, certificates, and the agents' API.


def _join_token(api: TestClient, h: dict[str, str], **body: object) -> str:
    made = api.post("/v1/hosts/join-tokens", headers=h, json=body)
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


def _join(api: TestClient, token: str, name: str = "host-b") -> httpx.Response:
    csr = csr_for(new_host_key(), "whatever-i-like").decode()
    return api.post("/v1/hosts/join", json={"token": token, "csr": csr, "name": name})


def _denied_joins(cp: ControlPlane) -> list[str]:
    with cp.db.read() as session:
        rows = session.execute(select(AuditEvent).where(AuditEvent.action == "host.join")).scalars()
        return [json.loads(r.detail)["reason"] for r in rows if r.outcome == "denied"]


def test_a_join_token_buys_one_client_certificate(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    token = _join_token(api, h, region="local", expires_in=600)
    secret = token.split(".")[2]
    joined = _join(api, token)
    assert joined.status_code == 201, joined.text
    body = joined.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    # The CA names the host, not the request: a CSR cannot pick its identity or usage.
    assert host_id_of(cert) == body["host_id"]
    assert cert.subject.rfc4514_string() == f"CN={body['host_id']}"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (
        body["name"] == "host-b" and body["agent_port"] == installation.settings.agent_listen_port
    )

    # Once only; a forged secret or an expired token buys nothing; all refusals are audited.
    reused = _join(api, token, "host-c")
    assert reused.status_code == 401 and "already used" in reused.json()["detail"]
    parts = token.split(".")
    forged = _join(api, ".".join([parts[0], parts[1], "x" * 43, parts[3]]), "host-d")
    assert forged.status_code == 401 and "not valid" in forged.json()["detail"]
    late = _join_token(api, h)
    with control_plane.db.write() as session:
        row = session.get(JoinToken, late.split(".")[1])
        assert row is not None
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    expired = _join(api, late, "host-e")
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert _join(api, "hjt1.nonsense", "host-f").status_code == 422
    assert sorted(_denied_joins(control_plane)) == sorted(
        [
            "the join token was already used",
            "the join token is not valid",
            "the join token has expired",
            "that is not a Hangar join token",
        ]
    )
    names = [x["name"] for x in api.get("/v1/hosts", headers=h).json()]
    assert names == ["host-b"]  # nothing half-made by the refusals
    # The secret is stored only as a hash.
    with control_plane.db.read() as session:
        stored = session.execute(select(JoinToken)).scalars().all()
    assert all(secret not in repr(vars(r)) for r in stored)
    db_file = installation.settings.data_dir / "hangar.db"
    if db_file.exists():
        assert secret.encode() not in db_file.read_bytes()


def test_join_tokens_are_for_operators(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/orgs/acme/members", headers=h, json={"email": "m@example.com", "role": "admin"})
    org_admin = bearer(mint_token(control_plane, "m@example.com", kind="org", org="acme"))
    assert api.post("/v1/hosts/join-tokens", headers=org_admin, json={}).status_code == 403
    assert api.post("/v1/hosts/join-tokens", json={}).status_code == 401
    bad_name = api.post("/v1/hosts/join-tokens", headers=h, json={"name": "Not A Name"})
    assert bad_name.status_code == 422


def _as_host(app: FastAPI, cert_pem: str | None) -> Callable[..., Awaitable[None]]:
    """The agents' app with a client certificate in its scope, as the mTLS listener adds."""
    der = (
        x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
        if cert_pem
        else None
    )

    async def wrapped(scope: dict[str, object], receive: object, send: object) -> None:
        if der is not None and scope["type"] == "http":
            scope = {**scope, PEER_CERT_SCOPE_KEY: der}
        await app(scope, receive, send)  # type: ignore[arg-type]

    return wrapped


def test_the_agents_api_shows_a_host_only_its_own(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="h1", region="local")
    joined = _join(api, _join_token(api, h)).json()
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    one_off = {"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]}
    api.post("/v1/hosts/h1/cordon", headers=h)
    mine = api.post("/v1/apps/web/machines", headers=h, json=one_off).json()
    api.post("/v1/hosts/h1/uncordon", headers=h)
    api.post("/v1/hosts/host-b/cordon", headers=h)
    theirs = api.post("/v1/apps/web/machines", headers=h, json=one_off).json()
    assert (mine["host"], theirs["host"]) == ("host-b", "h1")

    agents = create_agent_app(control_plane)
    with TestClient(_as_host(agents, None), raise_server_exceptions=False) as anonymous:
        assert anonymous.get("/agent/v1/assignments").status_code == 401
    with TestClient(
        _as_host(agents, joined["certificate"]), raise_server_exceptions=False
    ) as host_b:
        got = host_b.get("/agent/v1/assignments").json()
        assert [a["machine_id"] for a in got["assignments"]] == [mine["id"]]
        assert got["assignments"][0]["image_digest"].startswith("sha256:")
        # Unchanged: the long poll waits, then answers with the same version.
        again = host_b.get(
            "/agent/v1/assignments", params={"after": got["version"], "wait": 0.5}
        ).json()
        assert again["version"] == got["version"]

        # Another host's machine: not visible, not reportable, its image not served.
        assert host_b.get(f"/agent/v1/machines/{theirs['id']}/image").status_code == 404
        info = {
            "status": "running",
            "version": 0,
            "healthy": True,
            "exit_code": None,
            "checks": [],
        }
        sent = host_b.post(
            "/agent/v1/report", json={"machines": {theirs["id"]: info, mine["id"]: info}}
        )
        assert sent.status_code == 204
        states = {m["id"]: m["state"] for m in api.get("/v1/apps/web/machines", headers=h).json()}
        assert states == {mine["id"]: "started", theirs["id"]: "created"}

        image = host_b.get(f"/agent/v1/machines/{mine['id']}/image").json()
        assert set(image["blobs"]) >= {image["manifest"]["digest"]}
        for digest in image["blobs"]:
            blob = host_b.get(f"/agent/v1/machines/{mine['id']}/image/blobs/{digest}")
            assert blob.status_code == 200
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == digest
        other = "sha256:" + "0" * 64
        refused = host_b.get(f"/agent/v1/machines/{mine['id']}/image/blobs/{other}")
        assert refused.status_code == 404

        # Removed: the host's certificate is refused at once, and the refusal audited.
        running = api.delete(f"/v1/apps/web/machines/{mine['id']}", headers=h)
        assert running.status_code == 409 and "--force" in running.json()["hint"]
        destroyed = api.delete(f"/v1/apps/web/machines/{mine['id']}?force=true", headers=h)
        assert destroyed.status_code == 200
        busy = api.delete("/v1/hosts/host-b", headers=h)
        assert busy.status_code == 409 and "still has 1 machine" in busy.json()["detail"]
        gone = {"status": "absent", "healthy": None, "exit_code": None, "checks": []}
        host_b.post("/agent/v1/report", json={"machines": {mine["id"]: gone}})
        assert api.delete("/v1/hosts/host-b", headers=h).status_code == 204
        after = host_b.get("/agent/v1/assignments")
        assert after.status_code == 403 and "no longer accepted" in after.json()["detail"]
    with control_plane.db.read() as session:
        denied = (
            session.execute(
                select(AuditEvent).where(
                    AuditEvent.action == "host.authenticate", AuditEvent.outcome == "denied"
                )
            )
            .scalars()
            .all()
        )
    assert [e.target for e in denied] == [joined["host_id"]]
    assert api.post("/v1/hosts/host-b/cordon", headers=h).status_code == 404


def test_placement_counts_memory(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    h = installation.headers
    with control_plane.db.write() as session:
        register_local_host(session, name="small", region="local", memory_mb=600)
    build_layout(tmp_path / "img", [layer_tar([])])
    api.post("/v1/apps", headers=h, json={"name": "web"})
    one_off = {"image": upload_layout(api, h, "web", tmp_path / "img"), "cmd": ["true"]}
    for _ in range(2):  # 2 x 256 MB fit in 600
        assert api.post("/v1/apps/web/machines", headers=h, json=one_off).status_code == 201
    full = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert full.status_code == 409 and "256 MB free" in full.json()["detail"]
    assert api.get("/v1/hosts/small", headers=h).json()["memory_mb"] == 600
    with control_plane.db.write() as session:
        register_local_host(session, name="roomy", region="local")  # memory unknown: no limit
    made = api.post("/v1/apps/web/machines", headers=h, json=one_off)
    assert made.status_code == 201 and made.json()["host"] == "roomy"
