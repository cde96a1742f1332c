"""Commands that wait for a host's job (a backup, a drill, a fork) wait as long as the
server does, not the client's usual timeout; a read that times out says what to do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hangar.cli.client import LONG_READ_SECONDS, Client
from hangar.config.settings import ClientSettings
from hangar.errors import HangarError


def _client(handler: Any) -> Client:
    settings = ClientSettings(api_url="https://127.0.0.1:9", token="t", timeout=30.0)
    client = Client(settings)
    client._http = httpx.Client(
        base_url="https://127.0.0.1:9", transport=httpx.MockTransport(handler)
    )
    return client


def test_a_long_request_waits_as_long_as_the_server_and_others_do_not() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(201, json={"ok": True})

    client = _client(handler)
    assert client.request_long("POST", "/v1/x") == {"ok": True}
    assert client.request("GET", "/v1/y") == {"ok": True}
    assert seen[0]["read"] == LONG_READ_SECONDS >= 600 and seen[0]["connect"] == 30.0
    assert seen[1]["read"] != LONG_READ_SECONDS


def test_a_read_that_times_out_says_the_work_may_go_on() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(HangarError, match="did not answer in time") as caught:
        _client(handler).request_long("POST", "/v1/x")
    assert "still be going on" in (caught.value.hint or "")
