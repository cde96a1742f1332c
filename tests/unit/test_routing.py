"""The routing table and its HAProxy rendering (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.domain.routing import (
    CertBundle,
    HttpRoute,
    RoutingTable,
    Server,
    TcpRoute,
    hsts_header,
    validate_hostname,
)
from hangar.edge.render import EdgeConfig, render
from hangar.errors import ValidationError
from hangar.tlsprofile import TLS12_CIPHERS

CFG = EdgeConfig(directory=Path("/run/edge"), bind_host="127.0.0.1", http_port=80, https_port=443)


def table(up: bool = True, **route: object) -> RoutingTable:
    fields: dict[str, object] = {
        "app": "clinic",
        "hostnames": ("clinic.apps.example.com", "clinic.example.com"),
        "servers": (Server("m_1", "fd00::2", 8080, up), Server("m_2", "fd00::3", 8080, True)),
        "hsts": hsts_header(63072000, True, False),
        **route,
    }
    return RoutingTable(http=(HttpRoute(**fields),), acme_responder="127.0.0.1:8443")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "localhost",
        "clinic",
        "10.0.0.1",
        "clinic.example.com.",
        "-clinic.example.com",
        "clinic_.example.com",
        "clinic.example.com:443",
        "clinic example.com",
        "*.example.com",
        "a" * 64 + ".example.com",
        "x." * 127 + "com",
        "clinic.example.com/evil",
    ],
)
def test_bad_hostnames_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        validate_hostname(bad)


def test_hostnames_are_normalised_and_wildcards_only_when_asked() -> None:
    assert validate_hostname("Clinic.Example.COM") == "clinic.example.com"
    assert validate_hostname("*.example.com", wildcard=True) == "*.example.com"
    with pytest.raises(ValidationError):
        validate_hostname("a.*.example.com", wildcard=True)


@given(st.text(max_size=40))
def test_any_accepted_hostname_is_safe_to_render(name: str) -> None:
    """Whatever passes validation has no character that could break a config line."""
    try:
        out = validate_hostname(name)
    except ValidationError:
        return
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz0123456789-.")


def test_state_changes_do_not_change_the_shape() -> None:
    a, b = table(up=True), table(up=False)
    assert a.shape_digest() == b.shape_digest()
    assert a.states() != b.states()
    assert b.states()[("app_clinic", "m_1")] is False
    c = table(servers=(Server("m_1", "fd00::9", 8080, True),))
    assert c.shape_digest() != a.shape_digest()


def test_a_table_survives_its_json_form() -> None:
    t = RoutingTable(
        http=table().http,
        tcp=(TcpRoute("db", 5432, (Server("m_3", "fd00::4", 5432, True),), tls=True),),
        certs=(CertBundle("clinic.example.com", "CHAIN", "KEY"),),
        acme_responder="127.0.0.1:8443",
    )
    assert RoutingTable.from_json(t.to_json()) == t
    with pytest.raises(ValidationError):
        RoutingTable.from_json({"http": [{"app": "x"}]})


def test_the_key_never_shows_in_a_repr() -> None:
    assert "SECRET-KEY" not in repr(CertBundle("a.example.com", "CHAIN", "SECRET-KEY"))


def test_render_routes_only_what_is_declared() -> None:
    out = render(table(), CFG, Path("/run/edge/conf.x"), with_state=True)
    assert out.maps["hosts.map"] == (
        "clinic.apps.example.com app_clinic\nclinic.example.com app_clinic\n"
    )
    assert "backend app_clinic" in out.config
    assert "server m_1 [fd00::2]:8080" in out.config
    empty = render(RoutingTable(), CFG, Path("/run/edge/conf.y"), with_state=True)
    assert empty.maps["hosts.map"] == ""
    assert "backend app_" not in empty.config
    # An unknown name gets the edge's own 404 before any backend is chosen.
    assert "http-request return status 404" in empty.config


def test_render_acme_comes_before_apps_and_redirects() -> None:
    config = render(table(), CFG, Path("/c"), with_state=True).config
    http = config.split("frontend http-in", 1)[1].split("frontend https-in", 1)[0]
    assert http.index("acl acme path_beg /.well-known/acme-challenge/") < http.index("redirect")
    assert "if !acme" in http.split("redirect", 1)[1].splitlines()[0]
    assert http.index("use_backend acme if acme") < http.index("use_backend %[")


def test_render_tls_is_the_intermediate_profile() -> None:
    config = render(table(), CFG, Path("/c"), with_state=True).config
    assert f"ssl-default-bind-ciphers {TLS12_CIPHERS}\n" in config
    assert "CBC" not in TLS12_CIPHERS and "SHA256:" not in TLS12_CIPHERS.replace("GCM-SHA256", "")
    assert "no-sslv3 no-tlsv10 no-tlsv11" in config
    assert "prefer-client-ciphers" in config
    assert "alpn h2,http/1.1" in config


def test_render_hsts_redirect_and_forwarding() -> None:
    out = render(table(force_https=False, hsts=None), CFG, Path("/c"), with_state=True)
    assert out.maps["redirect.map"] == "" and out.maps["hsts.map"] == ""
    out = render(table(), CFG, Path("/c"), with_state=True)
    assert "clinic.example.com 1\n" in out.maps["redirect.map"]
    assert "clinic.example.com max-age=63072000; includeSubDomains\n" in out.maps["hsts.map"]
    # Client-supplied forwarding headers are replaced, never appended to.
    assert "http-request set-header X-Forwarded-For %[src]" in out.config
    assert "http-after-response set-header Strict-Transport-Security" in out.config


def test_render_state_only_when_asked() -> None:
    down = table(up=False)
    assert (
        "[fd00::2]:8080 maxconn 25 minconn 20 disabled"
        in render(down, CFG, Path("/c"), with_state=True).config
    )
    assert "disabled" not in render(down, CFG, Path("/c"), with_state=False).config


def test_render_rate_limit_and_limits() -> None:
    config = render(
        table(rate_limit=5, soft_limit=3, hard_limit=7), CFG, Path("/c"), with_state=True
    ).config
    assert "sc_http_req_rate(1) gt 50" in config
    assert "maxconn 7 minconn 3" in config


def test_render_tcp_services() -> None:
    t = RoutingTable(
        tcp=(TcpRoute("db", 5432, (Server("m_3", "fd00::4", 5433, True),), proxy_protocol=True),)
    )
    config = render(t, CFG, Path("/c"), with_state=True).config
    assert "frontend tcp_db_5432" in config and "bind 127.0.0.1:5432" in config
    assert "server m_3 [fd00::4]:5433 maxconn 25 send-proxy-v2" in config


def test_redirect_keeps_a_non_standard_port() -> None:
    cfg = EdgeConfig(directory=Path("/e"), http_port=8080, https_port=8443)
    config = render(table(), cfg, Path("/c"), with_state=True).config
    assert "location https://%[var(txn.host)]:8443%[capture.req.uri]" in config
    assert "bind [::]:8443 v4v6" in config


def test_machines_enter_rotation_before_others_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two runtime commands the worker serves requests: never leave it none."""
    from hangar.edge import haproxy

    sent: list[str] = []
    monkeypatch.setattr(haproxy, "_unix_command", lambda path, line: sent.append(line) or "")
    edge = haproxy.Edge(CFG)
    edge._states = {("app_clinic", "m_a"): True, ("app_clinic", "m_b"): False}
    edge._apply_states({("app_clinic", "m_a"): False, ("app_clinic", "m_b"): True})
    assert sent == ["set server app_clinic/m_b state ready;set server app_clinic/m_a state maint"]
    sent.clear()
    edge._apply_states({("app_clinic", "m_a"): False, ("app_clinic", "m_b"): True})
    assert sent == []  # nothing changed, nothing sent
