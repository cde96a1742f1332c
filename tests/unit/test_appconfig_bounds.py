"""Every number and duration in hangar.toml has a range; text sent over HTTP is plain."""

from __future__ import annotations

import pytest

from hangar.config.appconfig import parse_app_config
from hangar.errors import ConfigError

CHECK = 'app = "web"\n[[http_service.checks]]\n'


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('app = "web"\nkill_timeout = "300s"\n', True),
        ('app = "web"\nkill_timeout = "301s"\n', False),
        ('app = "web"\nkill_timeout = "3650d"\n', False),
        ('app = "web"\nkill_timeout = nan\n', False),
        ('app = "web"\nkill_timeout = inf\n', False),
        (CHECK + 'interval = "50ms"\n', True),
        (CHECK + 'interval = "0s"\n', False),
        (CHECK + 'interval = "1h"\n', True),
        (CHECK + 'interval = "2h"\n', False),
        (CHECK + 'timeout = "60s"\n', True),
        (CHECK + 'timeout = "61s"\n', False),
        (CHECK + 'timeout = "3650d"\n', False),
        (CHECK + 'grace_period = "1h"\n', True),
        (CHECK + 'grace_period = "2h"\n', False),
        ('app = "web"\n[http_service]\nrate_limit = 1000000\n', True),
        ('app = "web"\n[http_service]\nrate_limit = 1000001\n', False),
        ('app = "web"\n[http_service]\nrate_limit = 9223372036854775807\n', False),
        (
            'app = "web"\n[http_service]\nconcurrency = { soft_limit = 1, hard_limit = 100001 }\n',
            False,
        ),
        ('app = "web"\n[http_service]\nhsts = { max_age = 999999999999 }\n', False),
        ('app = "web"\n[http_service]\ninternal_port = 65536\n', False),
        ('app = "web"\n[[vm]]\ncpus = 65\n', False),
        ('app = "web"\n[[vm]]\nmemory = "1000000gb"\n', False),
        ('app = "web"\n[[restart]]\nretries = 1001\n', False),
        (CHECK + 'path = "/healthz?full=1"\n', True),
        (CHECK + 'path = "/h\\r\\nX-Injected: 1"\n', False),
        (CHECK + 'path = "/a b"\n', False),
        (CHECK + 'path = "/\\u0000"\n', False),
        (CHECK + 'path = "/\\u202e"\n', False),
        (CHECK + 'headers = { "X-Ok" = "fine value" }\n', True),
        (CHECK + 'headers = { "X-A" = "v\\r\\nX-B: 1" }\n', False),
        (CHECK + 'headers = { "X-A" = "a\\u200bb" }\n', False),
        (CHECK + 'headers = { "X-A" = "\\u2066x" }\n', False),
        (CHECK + 'headers = { "X A" = "v" }\n', False),
        (CHECK + 'headers = { "" = "v" }\n', False),
        ('app = "web"\n[[mounts]]\nsource = "data"\ndestination = "/data\\n"\n', False),
        ('app = "web"\n[[metrics]]\nport = 9091\npath = "/m\\r\\n"\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = 1000\n', True),
        ('app = "web"\n[deploy]\nmax_unavailable = 1001\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = 0\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = 2.5\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = nan\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = true\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = "25%"\n', True),
        ('app = "web"\n[deploy]\nmax_unavailable = "100%"\n', True),
        ('app = "web"\n[deploy]\nmax_unavailable = "0%"\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = "101%"\n', False),
        ('app = "web"\n[deploy]\nmax_unavailable = "25"\n', False),
        ('app = "web"\n[deploy]\ndrain_timeout = "300s"\n', True),
        ('app = "web"\n[deploy]\ndrain_timeout = "301s"\n', False),
        ('app = "web"\n[deploy]\nbluegreen_grace = "1h"\n', True),
        ('app = "web"\n[deploy]\nbluegreen_grace = "2h"\n', False),
        ('app = "web"\n[deploy]\nstrategy = "bluegreen"\nmax_error_rate = 0.05\n', True),
        ('app = "web"\n[deploy]\nstrategy = "bluegreen"\nmax_error_rate = 0\n', False),
        ('app = "web"\n[deploy]\nstrategy = "bluegreen"\nmax_error_rate = 1.5\n', False),
        ('app = "web"\n[deploy]\nstrategy = "rolling"\nmax_error_rate = 0.05\n', False),
        ('app = "web"\n[deploy]\nmax_error_rate = 0.05\n', False),
        ('app = "web"\n[deploy]\nerror_window = "10m"\n', True),
        ('app = "web"\n[deploy]\nerror_window = "11m"\n', False),
        ('app = "web"\n[deploy]\nerror_window = "0.5s"\n', False),
    ],
)
def test_ranges_and_plain_text(text: str, ok: bool) -> None:
    if ok:
        parse_app_config(text)
    else:
        with pytest.raises(ConfigError):
            parse_app_config(text)


def test_lists_are_bounded() -> None:
    many = 'app = "web"\n' + "".join(
        f"[[services]]\ninternal_port = 80\n[[services.ports]]\nport = {10000 + i}\n"
        for i in range(33)
    )
    with pytest.raises(ConfigError):
        parse_app_config(many)
