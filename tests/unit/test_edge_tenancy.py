"""The edge's rendering between organizations, and what a quarantine leaves out (pure)."""

from __future__ import annotations

from pathlib import Path

from hangar.domain.routing import CertBundle, HttpRoute, RoutingTable, Server, TcpRoute
from hangar.edge.quarantine import only, units, without
from hangar.edge.render import EdgeConfig, render

SERVER = (Server("m1", "fd00::1", 8080, True),)


def _table() -> RoutingTable:
    return RoutingTable(
        http=(
            HttpRoute("web1", ("web1.shop.test",), SERVER, org="acme"),
            HttpRoute("shop", ("a.shop.test",), SERVER, org="globex"),
            HttpRoute("plain", ("plain.other.test",), SERVER, org="acme"),
        ),
        tcp=(TcpRoute("db", 15432, SERVER),),
        certs=(
            CertBundle("*.shop.test", "CHAIN", "KEY", org="globex"),
            CertBundle("web1.shop.test", "CHAIN", "KEY", org="acme"),
            CertBundle("a.shop.test", "CHAIN", "KEY", org="acme"),  # not acme's name
        ),
    )


def test_certificates_list_only_their_organizations_names(tmp_path: Path) -> None:
    rendered = render(_table(), EdgeConfig(directory=tmp_path), tmp_path, with_state=True)
    lines = {line.split()[0].rsplit("/", 1)[1]: line for line in rendered.crt_list.splitlines()}
    assert lines["cert-_wildcard_.shop.test.pem"].endswith("*.shop.test !web1.shop.test")
    assert lines["cert-web1.shop.test.pem"].endswith(" web1.shop.test")
    # acme's certificate for globex's name is never offered for it.
    assert "cert-a.shop.test.pem" not in lines
    # Names with a certificate of their own (from their organization) need SNI.
    assert rendered.maps["tls.map"] == "a.shop.test 1\nweb1.shop.test 1\n"
    assert "!has_sni host_has_cert" in rendered.config


def test_a_wildcard_covers_one_label() -> None:
    wild = CertBundle("*.shop.test", "C", "K")
    assert wild.covers("a.shop.test")
    assert not wild.covers("shop.test") and not wild.covers("a.b.shop.test")
    assert not wild.covers("*.shop.test")


def test_quarantine_units_leave_out_exactly_what_they_name() -> None:
    table = _table()
    assert units(table) == [
        "http:web1",
        "http:shop",
        "http:plain",
        "tcp:db:15432",
        "cert:*.shop.test",
        "cert:web1.shop.test",
        "cert:a.shop.test",
    ]
    rest = without(table, {"http:shop": "refused", "tcp:db:15432": "in use"})
    assert [r.app for r in rest.http] == ["web1", "plain"] and rest.tcp == ()
    assert rest.certs == table.certs
    alone = only(table, ["cert:web1.shop.test"])
    assert alone.http == () and [c.hostname for c in alone.certs] == ["web1.shop.test"]
