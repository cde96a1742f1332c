"""Host names and certificates through the API and the store, tried as an attacker would."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from acme import messages
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.config.appconfig import parse_app_config
from hangar.controlplane.acme import Issuer, _describe
from hangar.controlplane.keys import rotate_kek
from hangar.controlplane.machines import create_machine, create_release, register_local_host
from hangar.controlplane.routes import RouteBuilder
from hangar.controlplane.state import ControlPlane
from hangar.crypto.ca import InternalCA
from hangar.errors import IntegrityError
from hangar.store.tables import AcmeChallenge, App, AuditEvent, Certificate, Machine, Release
from tests.conftest import Installation, bearer, mint_token

WITH_SERVICE = """
app = "{app}"
[http_service]
  internal_port = {port}
  force_https = true
  [[http_service.checks]]
    path = "/healthz"
"""


def _prove(cp: ControlPlane, hostname: str) -> None:
    """Mark the one claim of ``hostname`` as proven (as a found TXT record or validated order)."""
    with cp.db.write() as s:
        row = s.execute(select(Certificate).where(Certificate.hostname == hostname)).scalar_one()
        row.proven_at = dt.datetime.now(dt.UTC)


def _bundle(
    hostname: str, days: int = 90, ca: InternalCA | None = None
) -> tuple[str, str, InternalCA]:
    ca = ca or InternalCA.create("import-test")
    cert, key = ca.issue_server_cert([hostname], days=days)
    return cert.decode() + ca.pem(), key.decode(), ca


def test_add_list_show_remove_and_bad_input(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    assert api.post("/v1/apps", headers=h, json={"name": "web"}).status_code == 201
    added = api.post("/v1/apps/web/certs", headers=h, json={"hostname": "Clinic.Example.com"})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["hostname"] == "clinic.example.com" and body["status"] == "pending"
    assert "point clinic.example.com" in body["dns"]
    for bad in ("clinic", "1.2.3.4", "*.example.com", "web.apps.localhost", "a_b.example.com"):
        refused = api.post("/v1/apps/web/certs", headers=h, json={"hostname": bad})
        assert refused.status_code == 422, (bad, refused.text)
    again = api.post("/v1/apps/web/certs", headers=h, json={"hostname": "clinic.example.com"})
    assert again.status_code == 409
    listed = api.get("/v1/apps/web/certs", headers=h).json()
    assert [c["hostname"] for c in listed] == ["clinic.example.com"]
    shown = api.get("/v1/apps/web/certs/clinic.example.com", headers=h)
    assert shown.status_code == 200 and shown.json()["source"] == "acme"
    assert api.get("/v1/apps/web/certs/nope.example.com", headers=h).status_code == 404
    assert api.delete("/v1/apps/web/certs/clinic.example.com", headers=h).status_code == 204
    assert api.get("/v1/apps/web/certs", headers=h).json() == []
    with control_plane.db.read() as s:
        actions = [e.action for e in s.execute(select(AuditEvent)).scalars()]
    assert "cert.add" in actions and "cert.remove" in actions


def test_another_org_cannot_see_take_or_remove_a_name(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps/web/certs", headers=h, json={"hostname": "clinic.example.com"})
    _prove(control_plane, "clinic.example.com")  # held: web proved control of it
    api.post("/v1/orgs", headers=h, json={"name": "globex"})
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    api.post("/v1/apps", headers=h, json={"name": "evil", "org": "globex"})
    eve = bearer(mint_token(control_plane, "eve@example.com", org="globex"))
    # Another org's app answers 404, exactly as a missing one.
    assert api.get("/v1/apps/web/certs", headers=eve).status_code == 404
    assert api.delete("/v1/apps/web/certs/clinic.example.com", headers=eve).status_code == 404
    # Taking the name for its own app: refused, naming neither the app nor its org.
    taken = api.post("/v1/apps/evil/certs", headers=eve, json={"hostname": "clinic.example.com"})
    assert taken.status_code == 409
    assert "web" not in taken.text and "acme" not in taken.text
    # Without a token, or with a viewer's: refused.
    assert api.get("/v1/apps/web/certs").status_code == 401
    api.post(
        "/v1/orgs/acme/members", headers=h, json={"email": "val@example.com", "role": "viewer"}
    )
    val = bearer(mint_token(control_plane, "val@example.com", org="acme"))
    assert api.get("/v1/apps/web/certs", headers=val).status_code == 200
    assert (
        api.post("/v1/apps/web/certs", headers=val, json={"hostname": "x.example.com"}).status_code
        == 403
    )
    # The edge's status is for installation operators only.
    assert api.get("/v1/edge", headers=eve).status_code in (403, 404)
    assert api.get("/v1/edge", headers=h).status_code == 200


def test_import_checks_everything_and_never_returns_the_key(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    chain, key, ca = _bundle("clinic.example.com")
    _, other_key, _ = _bundle("clinic.example.com", ca=ca)
    wrong_name, wrong_name_key, _ = _bundle("other.example.com", ca=ca)
    cases = [
        ({"fullchain": chain, "private_key": other_key}, "does not belong"),
        ({"fullchain": wrong_name, "private_key": wrong_name_key}, "does not name"),
        ({"fullchain": "garbage", "private_key": key}, "not PEM"),
        ({"fullchain": chain, "private_key": "garbage"}, "private key"),
        ({"fullchain": ca.pem() + chain, "private_key": key}, "does not belong"),
    ]
    for body, words in cases:
        refused = api.put("/v1/apps/web/certs/clinic.example.com", headers=h, json=body)
        assert refused.status_code == 422 and words in refused.text, (words, refused.text)
    assert api.get("/v1/apps/web/certs", headers=h).json() == []  # nothing stored
    done = api.put(
        "/v1/apps/web/certs/clinic.example.com",
        headers=h,
        json={"fullchain": chain, "private_key": key},
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "imported" and done.json()["names"] == ["clinic.example.com"]
    key_body = key.split("-----")[2].strip().splitlines()[0]
    responses = done.text + api.get("/v1/apps/web/certs", headers=h).text
    responses += api.get("/v1/orgs/acme/audit", headers=h).text + api.get("/openapi.json").text
    assert key_body not in responses and "PRIVATE KEY" not in responses
    with control_plane.db.read() as s:
        row = s.execute(select(Certificate)).scalar_one()
        assert row.key_wrapped is not None and b"PRIVATE" not in row.key_wrapped
    for path in installation.settings.data_dir.glob("hangar.db*"):
        assert key_body.encode() not in path.read_bytes()
    # An imported certificate cannot be "renewed" by Hangar.
    renew = api.post("/v1/apps/web/certs/clinic.example.com/renew", headers=h)
    assert renew.status_code == 422 and "imported" in renew.text


def _app_with_release(cp: ControlPlane, name: str, text: str, status: str = "complete") -> App:
    with cp.db.write() as s:
        app = s.execute(select(App).where(App.name == name)).scalar_one()
        release = create_release(
            s,
            app,
            image="oci:/nowhere:latest",
            config=parse_app_config(text),
            strategy=None,
            actor="test",
        )
        release.status = status
        return app


def test_the_routing_table_routes_only_what_is_declared(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    cp, h = control_plane, installation.headers
    for name in ("web", "worker", "later"):
        api.post("/v1/apps", headers=h, json={"name": name})
    web = _app_with_release(cp, "web", WITH_SERVICE.format(app="web", port=8080))
    _app_with_release(cp, "worker", 'app = "worker"\n')  # declares no service
    _app_with_release(cp, "later", WITH_SERVICE.format(app="later", port=9000), status="failed")
    with cp.db.write() as s:
        register_local_host(s, name="h1", region="local", memory_mb=4096)
        app = s.get(App, web.id)
        assert app is not None
        healthy = create_machine(s, app, 1, "local")
        healthy.state, healthy.running_version, healthy.healthy = "started", 1, True
        sick = create_machine(s, app, 1, "local")
        sick.state, sick.running_version, sick.healthy = "started", 1, False
        starting = create_machine(s, app, 1, "local")
        ids = (healthy.id, sick.id, starting.id)
    api.post("/v1/apps/web/certs", headers=h, json={"hostname": "clinic.example.com"})
    _prove(cp, "clinic.example.com")
    builder = RouteBuilder(keyring=cp.keyring, ca=cp.ca, edge_domain="apps.example.test")
    with cp.db.read() as s:
        table = builder.build(s)
    assert [r.app for r in table.http] == ["web"]  # not worker, not a failed release
    (route,) = table.http
    assert route.hostnames == ("web.apps.example.test", "clinic.example.com")
    assert {s.name: s.up for s in route.servers} == {ids[0]: True, ids[1]: False, ids[2]: False}
    assert all(s.port == 8080 for s in route.servers)
    # The edge domain's wildcard from the internal CA; the pending name has no certificate yet.
    assert [c.hostname for c in table.certs] == ["*.apps.example.test"]
    wildcard = table.certs[0]
    with cp.db.read() as s:
        assert builder.build(s).certs[0] == wildcard  # kept between builds...
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=61)
        assert builder.build(s, now=soon).certs[0] != wildcard  # ...and re-issued in time
    # A machine on its way to a new release leaves rotation before it is replaced.
    with cp.db.write() as s:
        row = s.get(App, web.id)
        assert row is not None
        release = create_release(
            s,
            row,
            image="oci:/x:latest",
            config=parse_app_config(WITH_SERVICE.format(app="web", port=8080)),
            strategy=None,
            actor="test",
        )
        m = s.get(Machine, ids[0])
        assert m is not None
        m.version = release.version
    with cp.db.read() as s:
        assert not any(srv.up for srv in builder.build(s).http[0].servers)


def test_issuer_schedule_backoff_and_words(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    cp, h = control_plane, installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps/web/certs", headers=h, json={"hostname": "clinic.example.com"})
    issuer = Issuer(cp.db, cp.keyring, cp.audit, installation.settings)
    now = dt.datetime.now(dt.UTC)
    with cp.db.read() as s:
        cert_id = s.execute(select(Certificate.id)).scalar_one()
    assert issuer.due(now) == [cert_id]
    # Issued for 90 days (and 5 minutes): renewal falls due two thirds in, not before.
    chain, key, _ = _bundle("clinic.example.com")
    issuer._issued(cert_id, chain, key, renewing=False)
    with cp.db.read() as s:
        cert = s.get(Certificate, cert_id)
        assert cert is not None and cert.status == "valid" and cert.not_before is not None
        start = cert.not_before
    assert issuer.due(start + dt.timedelta(days=59)) == []
    assert issuer.due(start + dt.timedelta(days=60, minutes=4)) == [cert_id]
    # A failed renewal keeps the valid certificate and backs off, doubling.
    later = start + dt.timedelta(days=62)
    issuer._failed(cert_id, "the ACME server's rate limit was hit", renewing=True, now=later)
    issuer._failed(cert_id, "again", renewing=True, now=later)
    with cp.db.read() as s:
        cert = s.get(Certificate, cert_id)
        assert cert is not None and cert.status == "valid" and cert.attempts == 2
        assert cert.next_attempt_at == later + dt.timedelta(minutes=2)
        assert cert.last_error == "again"
        events = [(e.action, e.outcome) for e in s.execute(select(AuditEvent)).scalars()]
    assert ("cert.issue", "success") in events and ("cert.renew", "failure") in events
    assert issuer.due(later + dt.timedelta(minutes=1)) == []
    limited = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many")
    assert _describe(limited).startswith("the ACME server's rate limit was hit")


def test_challenge_answers_are_served_only_for_their_name(
    api: TestClient, control_plane: ControlPlane
) -> None:
    with control_plane.db.write() as s:
        s.add(
            AcmeChallenge(
                token="tok123",
                hostname="clinic.example.com",
                key_authorization="tok123.thumb",
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            )
        )
    path = "/.well-known/acme-challenge/tok123"
    ok = api.get(path, headers={"Host": "clinic.example.com"})
    assert ok.status_code == 200 and ok.text == "tok123.thumb"
    assert api.get(path, headers={"Host": "other.example.com"}).status_code == 404
    assert api.get(path + "x", headers={"Host": "clinic.example.com"}).status_code == 404


def test_kek_rotation_rewraps_certificate_keys(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    cp, h = control_plane, installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    _app_with_release(cp, "web", WITH_SERVICE.format(app="web", port=8080))
    chain, key, _ = _bundle("clinic.example.com")
    api.put(
        "/v1/apps/web/certs/clinic.example.com",
        headers=h,
        json={"fullchain": chain, "private_key": key},
    )
    _prove(cp, "clinic.example.com")
    with cp.db.read() as s:
        before = s.execute(select(Certificate.key_wrapped)).scalar_one()
    rotation = rotate_kek(cp)
    assert rotation.rewrapped >= 1
    with cp.db.read() as s:
        after = s.execute(select(Certificate.key_wrapped)).scalar_one()
        assert after != before and after is not None and cp.keyring.wrapped_by_current(after)
    builder = RouteBuilder(keyring=cp.keyring)
    with cp.db.read() as s:
        (bundle,) = builder.build(s).certs
    assert bundle.key_pem == key  # still the same key, under the new KEK


def test_destroying_an_app_frees_its_names(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    api.post("/v1/apps/web/certs", headers=h, json={"hostname": "clinic.example.com"})
    assert api.delete("/v1/apps/web", headers=h).status_code == 204
    with control_plane.db.read() as s:
        assert s.execute(select(Certificate)).first() is None
    api.post("/v1/apps", headers=h, json={"name": "next"})
    again = api.post("/v1/apps/next/certs", headers=h, json={"hostname": "clinic.example.com"})
    assert again.status_code == 201


def test_only_edge_hosts_get_the_routing_table_and_keys_come_sealed(
    api: TestClient, installation: Installation, control_plane: ControlPlane
) -> None:
    from fastapi import FastAPI

    from hangar.api.app import create_agent_app
    from hangar.crypto.secretbox import Opener
    from hangar.domain.routing import RoutingTable, edge_seal_context
    from tests.integration.test_hosts import _as_host, _join, _join_token

    h = installation.headers
    api.post("/v1/apps", headers=h, json={"name": "web"})
    _app_with_release(control_plane, "web", WITH_SERVICE.format(app="web", port=8080))
    chain, key, _ = _bundle("clinic.example.com")
    api.put(
        "/v1/apps/web/certs/clinic.example.com",
        headers=h,
        json={"fullchain": chain, "private_key": key},
    )
    _prove(control_plane, "clinic.example.com")
    worker = _join(api, _join_token(api, h), name="worker-1").json()
    made = api.post("/v1/hosts/join-tokens", headers=h, json={"edge": True})
    assert made.status_code == 201 and made.json()["edge"] is True
    edge = _join(api, made.json()["token"], name="edge-1").json()
    hosts = {x["name"]: x["edge"] for x in api.get("/v1/hosts", headers=h).json()}
    assert hosts == {"worker-1": False, "edge-1": True}
    agents: FastAPI = create_agent_app(control_plane)
    key_line = key.split("-----")[2].strip().splitlines()[0]
    with TestClient(_as_host(agents, worker["certificate"]), raise_server_exceptions=False) as w:
        refused = w.post("/agent/v1/routes", json={"public_key": Opener().public_b64()})
        assert refused.status_code == 403 and "not an edge host" in refused.text
    with TestClient(_as_host(agents, edge["certificate"]), raise_server_exceptions=False) as e:
        opener = Opener()
        got = e.post("/agent/v1/routes", json={"public_key": opener.public_b64()})
        assert got.status_code == 200, got.text
        assert key_line not in got.text and "PRIVATE KEY" not in got.text
        table = RoutingTable.from_json(got.json()["table"])
        assert [r.app for r in table.http] == ["web"]
        keys = opener.open(got.json()["keys"], edge_seal_context(edge["host_id"]))
        assert keys["clinic.example.com"] == key
        # Sealed to that host alone: opened as another host's, it fails.
        with pytest.raises(IntegrityError):
            opener.open(got.json()["keys"], edge_seal_context(worker["host_id"]))
    with control_plane.db.read() as s:
        denied = s.execute(
            select(AuditEvent).where(AuditEvent.action == "edge.routes")
        ).scalar_one()
        assert denied.outcome == "denied" and denied.target == "worker-1"


def test_a_tcp_port_is_served_by_one_app_only(
    api: TestClient, installation: Installation, control_plane: ControlPlane, tmp_path: Path
) -> None:
    from hangar.images.oci import build_layout, layer_tar
    from tests.uploads import upload_layout

    h = installation.headers
    build_layout(tmp_path / "img", [layer_tar([])])
    service = """
app = "{app}"
[[services]]
  internal_port = 5432
  [[services.ports]]
    port = {port}
    handlers = ["tls"]
"""
    for name in ("db", "db2"):
        api.post("/v1/apps", headers=h, json={"name": name})
    image = upload_layout(api, h, "db2", tmp_path / "img")
    _app_with_release(control_plane, "db", service.format(app="db", port=15432))
    taken = api.post(
        "/v1/apps/db2/releases",
        headers=h,
        json={"image": image, "config": service.format(app="db2", port=15432)},
    )
    assert taken.status_code == 409 and "already served by another app" in taken.text
    assert "db" not in taken.json()["detail"].replace("db2", "")
    edge_port = installation.settings.edge_https_port
    own = api.post(
        "/v1/apps/db2/releases",
        headers=h,
        json={"image": image, "config": service.format(app="db2", port=edge_port)},
    )
    assert own.status_code == 409 and "the edge's own" in own.text
    with control_plane.db.read() as s:
        db2 = s.execute(select(App).where(App.name == "db2")).scalar_one()
        assert s.execute(select(Release).where(Release.app_id == db2.id)).first() is None
    fine = api.post(
        "/v1/apps/db2/releases",
        headers=h,
        json={"image": image, "config": service.format(app="db2", port=15433)},
    )
    assert fine.status_code == 201, fine.text
