"""No hangar.toml and no image reference makes the deploy route answer 5xx.

Hypothesis writes hangar.toml documents (the schema's keys with hostile
values: huge and negative numbers, NaN, durations of years, control, zero-width
and bidi characters in paths and headers) and image references (host paths,
registry references, digests, junk), and sends them to the API's deploy route
as a member would. Every answer must be a success or a 4xx problem.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hangar.api.app import create_app
from hangar.controlplane.state import ControlPlane
from hangar.images import registry
from hangar.images.oci import build_layout, layer_tar
from tests.conftest import Installation, make_installation
from tests.uploads import upload_layout


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: \\uXXXX escapes are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml(document: dict[str, Any]) -> str:
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in document.items()) + "\n"


HOSTILE_TEXT = st.text(
    alphabet=st.sampled_from(
        [*"/aZ09._-:?%", "\r", "\n", "\x00", "\u200b", "\u202e", "\u2066", "\ufeff", " "]
    ),
    max_size=20,
)
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**64, 65535, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
)
DURATION = st.one_of(
    NUMBER,
    st.builds(
        lambda n, u: f"{n}{u}",
        st.integers(min_value=0, max_value=10**12),
        st.sampled_from(["", "ms", "s", "m", "h", "d", "y"]),
    ),
    HOSTILE_TEXT,
)
ANY = st.one_of(NUMBER, DURATION, HOSTILE_TEXT, st.booleans())
CHECK = st.fixed_dictionaries(
    {},
    optional={
        "grace_period": DURATION,
        "interval": DURATION,
        "timeout": DURATION,
        "method": st.sampled_from(["GET", "HEAD", "PUT", "get"]),
        "path": HOSTILE_TEXT.map(lambda t: "/" + t),
        "headers": st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3),
        "type": st.sampled_from(["tcp", "http", "udp"]),
        "port": NUMBER,
    },
)
PORTS = st.lists(
    st.fixed_dictionaries(
        {"port": NUMBER},
        optional={"handlers": st.lists(st.sampled_from(["http", "tls", "x"]), max_size=4)},
    ),
    max_size=3,
)
DOCUMENT = st.fixed_dictionaries(
    {"app": st.sampled_from(["web", "web", "other", "xn--80ak6aa92e", "Web\u200b"])},
    optional={
        "kill_timeout": DURATION,
        "kill_signal": st.sampled_from(["SIGTERM", "SIGHUP"]),
        "primary_region": HOSTILE_TEXT,
        "env": st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=3),
        "http_service": st.fixed_dictionaries(
            {},
            optional={
                "internal_port": NUMBER,
                "rate_limit": NUMBER,
                "checks": st.lists(CHECK, max_size=2),
                "concurrency": st.fixed_dictionaries(
                    {}, optional={"soft_limit": NUMBER, "hard_limit": NUMBER}
                ),
                "hsts": st.one_of(
                    st.booleans(), st.fixed_dictionaries({}, optional={"max_age": NUMBER})
                ),
            },
        ),
        "services": st.lists(
            st.fixed_dictionaries(
                {"internal_port": NUMBER, "ports": PORTS},
                optional={"tcp_checks": st.lists(CHECK, max_size=2)},
            ),
            max_size=2,
        ),
        "checks": st.dictionaries(st.sampled_from(["a", "b"]), CHECK, max_size=2),
        "vm": st.lists(
            st.fixed_dictionaries({}, optional={"cpus": NUMBER, "memory": ANY}), max_size=2
        ),
        "restart": st.lists(st.fixed_dictionaries({}, optional={"retries": NUMBER}), max_size=2),
        "mounts": st.lists(
            st.fixed_dictionaries({"source": HOSTILE_TEXT, "destination": HOSTILE_TEXT}),
            max_size=2,
        ),
        "metrics": st.fixed_dictionaries({"port": NUMBER}, optional={"path": HOSTILE_TEXT}),
        "processes": st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=2),
        "build": st.fixed_dictionaries({}, optional={"image": HOSTILE_TEXT}),
        "surprise": ANY,
    },
)
HOSTS = ["localhost", "127.0.0.1:18443", "[::1]:5000", "10.0.0.1", "registry.example", "a"]
IMAGE = st.one_of(
    st.text(max_size=60),
    st.builds(lambda p: "oci:" + p, st.sampled_from(["/etc/passwd", "/dev/null", "/", "", "x:"])),
    st.builds(
        lambda h, n: f"docker://{h}/{n}",
        st.sampled_from(HOSTS),
        st.text(alphabet="abc/:@._-0123456789", max_size=30),
    ),
    st.builds(lambda h: "sha256:" + h, st.text(alphabet="0123456789abcdefg", max_size=70)),
)


@pytest.fixture(scope="module")
def deploy_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, Installation, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    inst = make_installation(tmp / "data")
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), raise_server_exceptions=False) as api:
            api.post("/v1/apps", headers=inst.headers, json={"name": "web"})
            build_layout(tmp / "img", [layer_tar([])])
            yield api, inst, upload_layout(api, inst.headers, "web", tmp / "img")
    finally:
        cp.close()


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registry name resolves to loopback here, so none is contacted (and all refused)."""

    def loopback(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(registry.socket, "getaddrinfo", loopback)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _deploy(api: TestClient, inst: Installation, image: str, config: str) -> int:
    r = api.post(
        "/v1/apps/web/releases", headers=inst.headers, json={"image": image, "config": config}
    )
    assert r.status_code < 500, (image, config, r.status_code, r.text)
    return r.status_code


@FUZZ
@given(document=DOCUMENT)
def test_no_hangar_toml_makes_a_5xx(deploy_api: Any, document: dict[str, Any]) -> None:
    api, inst, image = deploy_api
    _deploy(api, inst, image, _toml(document))


@FUZZ
@given(image=IMAGE)
def test_no_image_reference_makes_a_5xx(deploy_api: Any, image: str) -> None:
    api, inst, _ = deploy_api
    _deploy(api, inst, image, 'app = "web"\n')


@FUZZ
@given(text=st.text(max_size=300))
def test_no_text_as_hangar_toml_makes_a_5xx(deploy_api: Any, text: str) -> None:
    api, inst, image = deploy_api
    _deploy(api, inst, image, text or " ")


def test_the_bounds_the_issue_named_are_refused(deploy_api: Any) -> None:
    api, inst, image = deploy_api
    for config in (
        'app = "web"\nkill_timeout = "3650d"\n',
        'app = "web"\n[http_service]\nrate_limit = 9223372036854775807\n',
        'app = "web"\n[[http_service.checks]]\ntimeout = "3650d"\n',
        'app = "web"\n[[http_service.checks]]\ninterval = "0s"\n',
        'app = "web"\n[[http_service.checks]]\npath = "/h\\r\\nX-Injected: 1"\n',
        'app = "web"\n[[http_service.checks]]\nheaders = { "X-A" = "v\\r\\nX-B: 1" }\n',
        'app = "web"\n[[http_service.checks]]\nheaders = { "X-A\\n" = "v" }\n',
        'app = "web"\n[[http_service.checks]]\npath = "/\\u202eevil"\n',
        'app = "web"\n[[http_service.checks]]\nheaders = { "X-A" = "a\\u200bb" }\n',
        'app = "web"\n[checks.a]\ntype = "http"\nport = 8080\npath = "/x y"\n',
    ):
        assert _deploy(api, inst, image, config) == 400, config


@pytest.mark.parametrize("path", [Path("/etc/passwd")])
def test_junk_is_not_an_image(deploy_api: Any, path: Path) -> None:
    api, inst, _ = deploy_api
    assert _deploy(api, inst, f"oci:{path}", 'app = "web"\n') == 422
