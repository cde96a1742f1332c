from __future__ import annotations

import re

import pytest

from hangar.config.appconfig import AppConfig, Metrics, parse_app_config, parse_duration
from hangar.errors import ConfigError

FLY_STYLE = """
app = "clinic-api"
primary_region = "fra"
kill_signal = "SIGTERM"
kill_timeout = "30s"

[build]
  image = "oci:./image:latest"

[env]
  LOG_LEVEL = "info"
  PORT = "8080"

[http_service]
  internal_port = 8080
  force_https = true
  hsts = { max_age = 63072000, include_subdomains = true, preload = false }
  [http_service.concurrency]
    type = "requests"
    soft_limit = 200
    hard_limit = 250
  [[http_service.checks]]
    grace_period = "10s"
    interval = "30s"
    method = "GET"
    timeout = "5s"
    path = "/healthz"
    [http_service.checks.headers]
      X-Health = "1"

[[services]]
  protocol = "tcp"
  internal_port = 5432
  [[services.ports]]
    port = 5432
    handlers = ["proxy_proto"]
  [[services.tcp_checks]]
    interval = "15s"
    timeout = "2s"

[checks]
  [checks.db]
    type = "tcp"
    port = 5432
    interval = "10s"

[deploy]
  strategy = "rolling"
  max_unavailable = 1
  release_command = "bin/migrate"
  wait_timeout = "5m"

[[vm]]
  cpus = 2
  memory = "1gb"

[[restart]]
  policy = "on-failure"
  retries = 5
"""


def test_fly_style_config_parses() -> None:
    cfg = parse_app_config(FLY_STYLE)
    assert cfg.app == "clinic-api"
    assert cfg.kill_timeout == 30.0
    assert cfg.http_service is not None
    assert cfg.http_service.checks[0].interval == 30.0
    assert cfg.http_service.hsts.max_age == 63072000
    assert cfg.services[0].ports[0].handlers == ["proxy_proto"]
    assert cfg.vm[0].memory == 1024
    assert cfg.deploy.wait_timeout == 300.0


# fly.toml keys and values Hangar does not act on: each refused by name, never
# accepted and ignored.
NOT_ACTED_ON = [
    (
        '[[mounts]]\nsource = "data"\ndestination = "/data"\ninitial_size = "1gb"\n',
        "mounts[0].initial_size: Hangar does not support making volumes on deploy",
    ),
    ('[[mounts]]\nsource = "data"\ndestination = "/proc/x"\n', "under /proc, which the"),
    ('[[mounts]]\nsource = "data"\ndestination = "/data/../etc"\n', "is not normalized"),
    ('[[mounts]]\nsource = "data"\ndestination = "/run/x"\n', "the machine's runtime owns"),
    ('[[mounts]]\nsource = "data"\ndestination = "/etc/hosts"\n', "hide a path the machine"),
    (
        '[[mounts]]\nsource = "a"\ndestination = "/data"\n'
        '[[mounts]]\nsource = "b"\ndestination = "/data/x"\n',
        "overlaps '/data'",
    ),
    ('[processes]\nweb = "bin/server"\n', "processes: Hangar does not support process groups"),
    ('[[vm]]\nprocesses = ["web"]\n', "vm[0].processes: Hangar does not support"),
    ('[[restart]]\nprocesses = ["web"]\n', "restart[0].processes: Hangar does not support"),
    ('[[vm]]\ncpu_kind = "performance"\n', "vm[0].cpu_kind: 'performance' is not supported"),
    (
        '[http_service.concurrency]\ntype = "connections"\n',
        "http_service.concurrency.type: 'connections' is not supported",
    ),
    (
        '[[http_service.checks]]\nprotocol = "https"\n',
        "http_service.checks[0].protocol: 'https' is not supported",
    ),
    (
        '[[services]]\nprotocol = "udp"\ninternal_port = 53\n[[services.ports]]\nport = 10053\n',
        "services[0].protocol: 'udp' is not supported",
    ),
    (
        '[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 10001\nhandlers = ["http"]\n',
        "the `http` handler is not supported",
    ),
    (
        "[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 10001\nforce_https = true\n",
        "force_https on [[services]] ports",
    ),
    (
        '[[services]]\ninternal_port = 1\n[services.concurrency]\ntype = "requests"\n'
        "[[services.ports]]\nport = 10001\n",
        "services[0].concurrency.type: 'requests' is not supported",
    ),
    (
        "[[services]]\ninternal_port = 1\n[services.concurrency]\nsoft_limit = 5\n"
        "[[services.ports]]\nport = 10001\n",
        "soft_limit for TCP services",
    ),
    (
        "[[services]]\ninternal_port = 1\n[[services.ports]]\nport = 10001\n"
        '[[services.http_checks]]\npath = "/"\n',
        'use [checks.NAME] with type = "http"',
    ),
]


@pytest.mark.parametrize(("text", "expected"), NOT_ACTED_ON)
def test_keys_hangar_does_not_act_on_are_refused(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_app_config('app = "web"\n' + text)


def test_the_values_hangar_acts_on_are_accepted() -> None:
    cfg = parse_app_config(
        'app = "web"\n[http_service.concurrency]\ntype = "requests"\n'
        '[[http_service.checks]]\nprotocol = "http"\n'
        '[[services]]\nprotocol = "tcp"\ninternal_port = 1\n[services.concurrency]\n'
        'type = "connections"\nhard_limit = 9\n[[services.ports]]\nport = 10001\n'
        'handlers = ["tls", "proxy_proto"]\nforce_https = false\n[[vm]]\ncpu_kind = "shared"\n'
    )
    assert cfg.services[0].concurrency.hard_limit == 9


def test_a_release_stored_before_a_refusal_still_loads() -> None:
    """Stored releases are model dumps: a value refused today must not break reading one."""
    cfg = parse_app_config('app = "web"\n[http_service]\ninternal_port = 80\n')
    stored = cfg.model_dump(mode="json")
    stored["http_service"]["concurrency"]["type"] = "connections"
    assert AppConfig.model_validate(stored).http_service is not None


def test_minimal_config_gets_secure_defaults() -> None:
    cfg = parse_app_config('app = "web"\n[http_service]\ninternal_port = 3000\n')
    assert cfg.http_service is not None
    assert cfg.http_service.force_https is True
    assert cfg.http_service.hsts.enabled is True
    assert cfg.services == []


def test_hsts_can_be_switched_off_with_a_bool() -> None:
    cfg = parse_app_config('app = "web"\n[http_service]\nhsts = false\n')
    assert cfg.http_service is not None and cfg.http_service.hsts.enabled is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'app = "web"\n[http_service]\ninternal_port = 80\nforse_https = true\n',
            "hangar.toml:4: unknown key 'http_service.forse_https'",
        ),
        (
            'app = "web"\n\n[[http_service.checks]]\ninterval = "5 parsecs"\n',
            "hangar.toml:4: http_service.checks[0].interval: invalid duration",
        ),
        ('app = "Web_App"\n', "hangar.toml:1: app: app name 'Web_App' is not a DNS label"),
        ('primary_region = "fra"\n', "app: required key is missing"),
        (
            'app = "web"\n[http_service]\ninternal_port = 70000\n',
            "hangar.toml:3: http_service.internal_port: Input should be less than or equal",
        ),
        ('app = "web"\n[[vm]]\nmemory = "12"\n', "hangar.toml:3: vm[0].memory"),
        ('app = "web"\n[env]\nHANGAR_X = "1"\n', "names starting HANGAR_ are reserved"),
        ('app = "web"\n[deploy]\nstrategy = "yolo"\n', "hangar.toml:3: deploy.strategy"),
        ('app = "web"\n[[services]]\ninternal_port = 1\nports = []\n', "services[0].ports"),
        (
            'app = "web"\n[http_service.concurrency]\nsoft_limit = 9\nhard_limit = 2\n',
            "soft_limit must not exceed hard_limit",
        ),
        ('app = "web\n', "hangar.toml:"),
        (
            'app = "web"\n[[files]]\nguest_path = "/etc/db"\nsecret_name = "DB"\n',
            "hangar.toml:3: files[0].guest_path: '/etc/db' must be a file under /run/",
        ),
        (
            'app = "web"\n[[files]]\nguest_path = "/run/../etc/x"\nsecret_name = "DB"\n',
            "is not a normalised absolute path",
        ),
        ('app = "web"\n[[files]]\nguest_path = "/run"\nsecret_name = "DB"\n', "under /run/"),
        (
            'app = "web"\n[[files]]\nguest_path = "/run/x"\nsecret_name = "1-bad"\n',
            "files[0].secret_name",
        ),
    ],
)
def test_errors_name_the_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_app_config(text)
    assert expected in info.value.message


def test_second_table_in_array_is_located() -> None:
    text = 'app = "web"\n[[vm]]\ncpus = 1\n[[vm]]\ncpus = 0\n'
    with pytest.raises(ConfigError, match=r"hangar.toml:5: vm\[1\].cpus"):
        parse_app_config(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("2m", 120), ("1h", 3600), ("1d", 86400), (3, 3.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10 parsecs", "-1s", True, "1y"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_metrics_tables_parse_with_their_bounds() -> None:
    one = parse_app_config('app = "web"\n[metrics]\nport = 9091\n')
    assert isinstance(one.metrics, Metrics) and (one.metrics.port, one.metrics.path) == (
        9091,
        "/metrics",
    )
    many = parse_app_config('app = "web"\n[[metrics]]\nport = 9091\npath = "/m"\n')
    assert isinstance(many.metrics, list) and many.metrics[0].path == "/m"
    for bad in ("port = 0", "port = 65536", 'port = 1\npath = "m"', 'port = 1\npath = "/a b"'):
        with pytest.raises(ConfigError, match="metrics"):
            parse_app_config(f'app = "web"\n[metrics]\n{bad}\n')
    seventeen = 'app = "web"\n' + "[[metrics]]\nport = 9091\n" * 17
    with pytest.raises(ConfigError, match="metrics"):
        parse_app_config(seventeen)
