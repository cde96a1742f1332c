"""Host names are held only after proof of control, tried as another organization would.

A local DNS server (dnslib) stands in for the world's DNS: a TXT record is
"published" by adding it there, and the installation is configured to ask it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RR, TXT
from dnslib.server import BaseResolver, DNSServer
from fastapi.testclient import TestClient
from sqlalchemy import select

from hangar.api.app import create_app
from hangar.controlplane.acme import Issuer
from hangar.controlplane.dnsproof import proof_name
from hangar.controlplane.routes import RouteBuilder
from hangar.controlplane.state import ControlPlane
from hangar.crypto.ca import InternalCA
from hangar.edge.render import EdgeConfig, render
from hangar.store.tables import App, AuditEvent, Certificate, Org
from tests.conftest import Installation, bearer, make_installation, mint_token
from tests.integration.test_certs_api import WITH_SERVICE, _app_with_release


class Zone(BaseResolver):  # type: ignore[misc]
    """TXT records by name; everything else answers empty."""

    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if request.q.qtype == QTYPE.TXT:
            for value in self.txt.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=5))
        return reply


class _Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    resolver = Zone()
    server = DNSServer(resolver, address="127.0.0.1", port=0, logger=_Quiet())
    server.start_thread()
    yield resolver, int(server.server.server_address[1])
    server.stop()
    server.server.server_close()


@pytest.fixture
def world(
    tmp_path: Path, zone: tuple[Zone, int]
) -> Iterator[tuple[TestClient, Installation, ControlPlane]]:
    _, port = zone
    inst = make_installation(tmp_path / "data", dns_proof_resolver=f"127.0.0.1:{port}")
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp), raise_server_exceptions=False) as client:
        yield client, inst, cp
    cp.close()


def _globex(api: TestClient, h: dict[str, str], cp: ControlPlane) -> dict[str, str]:
    api.post("/v1/orgs", headers=h, json={"name": "globex"})
    api.post(
        "/v1/orgs/globex/members", headers=h, json={"email": "eve@example.com", "role": "admin"}
    )
    api.post("/v1/apps", headers=h, json={"name": "evil", "org": "globex"})
    return bearer(mint_token(cp, "eve@example.com", org="globex"))


def _bundle(name: str) -> dict[str, str]:
    ca = InternalCA.create("self-signed-by-anyone")
    cert, key = ca.issue_server_cert([name], days=30)
    return {"fullchain": cert.decode() + ca.pem(), "private_key": key.decode()}


def _routed(cp: ControlPlane) -> tuple[dict[str, str], dict[str, str]]:
    """(host name -> app, certificate host name -> org) as the edge would get them."""
    with cp.db.read() as s:
        table = RouteBuilder(keyring=cp.keyring).build(s)
    names = {n: r.app for r in table.http for n in r.hostnames}
    return names, {c.hostname: c.org for c in table.certs}


def test_an_imported_certificate_holds_nothing_until_its_txt_record(
    world: tuple[TestClient, Installation, ControlPlane], zone: tuple[Zone, int]
) -> None:
    api, inst, cp = world
    dns, _ = zone
    h = inst.headers
    eve = _globex(api, h, cp)
    api.post("/v1/apps", headers=h, json={"name": "web", "org": "acme"})
    _app_with_release(cp, "web", WITH_SERVICE.format(app="web", port=8080))
    _app_with_release(cp, "evil", WITH_SERVICE.format(app="evil", port=8080))
    name = "clinic-portal.example"

    # globex imports a self-signed certificate for acme's name: stored, not held.
    taken = api.put(f"/v1/apps/evil/certs/{name}", headers=eve, json=_bundle(name))
    assert taken.status_code == 200, taken.text
    assert taken.json()["proven"] is False and proof_name(name) in taken.json()["proof"]
    assert _routed(cp) == ({}, {})  # neither routed nor served
    # acme's claim is not blocked by it.
    claim = api.post("/v1/apps/web/certs", headers=h, json={"hostname": name})
    assert claim.status_code == 201, claim.text
    token = claim.json()["proof"].split('"')[1]
    # globex cannot prove it (its record is not published) ...
    refused = api.post(f"/v1/apps/evil/certs/{name}/verify", headers=eve)
    assert refused.status_code == 422 and "no TXT record" in refused.text
    # ... and acme can: now acme holds the name, and the name routes to acme only.
    dns.txt[proof_name(name)] = [token]
    held = api.post(f"/v1/apps/web/certs/{name}/verify", headers=h)
    assert held.status_code == 200 and held.json()["proven"] is True, held.text
    assert _routed(cp)[0] == {name: "web"}
    # Even were globex's value published beside it, the name is taken.
    with cp.db.read() as s:
        theirs = s.execute(
            select(Certificate).join(App).where(App.name == "evil", Certificate.hostname == name)
        ).scalar_one()
        assert theirs.proof_token is not None
    dns.txt[proof_name(name)].append(theirs.proof_token)
    late = api.post(f"/v1/apps/evil/certs/{name}/verify", headers=eve)
    assert late.status_code == 409 and "web" not in late.text and "acme" not in late.text
    # A new claim of a held name is refused, naming no one.
    again = api.post("/v1/apps/evil/certs", headers=eve, json={"hostname": "x." + name})
    assert again.status_code == 201  # another name entirely: fine
    with cp.db.read() as s:
        actions = [e.action for e in s.execute(select(AuditEvent)).scalars()]
    assert "cert.verify" in actions


def test_pending_claims_block_no_one_and_a_contested_name_needs_txt(
    world: tuple[TestClient, Installation, ControlPlane], zone: tuple[Zone, int]
) -> None:
    api, inst, cp = world
    dns, _ = zone
    h = inst.headers
    eve = _globex(api, h, cp)
    api.post("/v1/apps", headers=h, json={"name": "web", "org": "acme"})
    name = "shop.example"
    first = api.post("/v1/apps/evil/certs", headers=eve, json={"hostname": name})
    second = api.post("/v1/apps/web/certs", headers=h, json={"hostname": name})
    assert first.status_code == 201 and second.status_code == 201, second.text
    # HTTP-01 through this edge cannot tell the two apart: no order for either.
    issuer = Issuer(cp.db, cp.keyring, cp.audit, inst.settings)
    with cp.db.read() as s:
        ids = {
            app: cid
            for app, cid in s.execute(
                select(App.name, Certificate.id).join(App).where(Certificate.hostname == name)
            )
        }
    for cert_id in ids.values():
        assert issuer.issue(cert_id) is False
    with cp.db.read() as s:
        errors = {c.id: c.last_error for c in s.execute(select(Certificate)).scalars()}
    assert all("also claims" in errors[c] for c in ids.values())
    # The one that proves control by DNS holds it; the other's order is refused.
    token = second.json()["proof"].split('"')[1]
    dns.txt[proof_name(name)] = [token]
    assert api.post(f"/v1/apps/web/certs/{name}/verify", headers=h).json()["proven"] is True
    assert issuer.issue(ids["evil"]) is False
    with cp.db.read() as s:
        evil = s.get(Certificate, ids["evil"])
        assert evil is not None and "already held by another app" in evil.last_error


def test_a_wildcard_serves_only_its_own_organizations_names(
    world: tuple[TestClient, Installation, ControlPlane], zone: tuple[Zone, int], tmp_path: Path
) -> None:
    api, inst, cp = world
    dns, _ = zone
    h = inst.headers
    eve = _globex(api, h, cp)
    api.post("/v1/apps", headers=h, json={"name": "web", "org": "acme"})
    _app_with_release(cp, "web", WITH_SERVICE.format(app="web", port=8080))
    _app_with_release(cp, "evil", WITH_SERVICE.format(app="evil", port=8080))
    # globex proves and imports *.shop.example; acme proves web1.shop.example.
    wild = api.put(
        "/v1/apps/evil/certs/*.shop.example", headers=eve, json=_bundle("*.shop.example")
    )
    assert wild.status_code == 200, wild.text
    own = api.put(
        "/v1/apps/web/certs/web1.shop.example", headers=h, json=_bundle("web1.shop.example")
    )
    dns.txt[proof_name("*.shop.example")] = [wild.json()["proof"].split('"')[1]]
    dns.txt.setdefault(proof_name("web1.shop.example"), []).append(
        own.json()["proof"].split('"')[1]
    )
    assert api.post("/v1/apps/evil/certs/*.shop.example/verify", headers=eve).status_code == 200
    # Until acme's own certificate is proven, web1.shop.example is not acme's at all.
    names, _ = _routed(cp)
    assert "web1.shop.example" not in names
    assert api.post("/v1/apps/web/certs/web1.shop.example/verify", headers=h).status_code == 200
    with cp.db.read() as s:
        orgs = {o.name: o.id for o in s.execute(select(Org)).scalars()}
        table = RouteBuilder(keyring=cp.keyring).build(s, now=dt.datetime.now(dt.UTC))
    by_name = {c.hostname: c.org for c in table.certs}
    assert by_name == {"*.shop.example": orgs["globex"], "web1.shop.example": orgs["acme"]}
    # The edge's certificate list keeps globex's wildcard off acme's name.
    rendered = render(table, EdgeConfig(directory=tmp_path), tmp_path, with_state=True)
    (wild_line,) = [line for line in rendered.crt_list.splitlines() if "cert-_wildcard_" in line]
    assert wild_line.endswith("*.shop.example !web1.shop.example")
