"""Errors that leave no one guessing: a 404 names what lists what exists; ids need no --app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from hangar.cli import client as client_module
from hangar.cli import machines
from hangar.cli.main import run


def _problem(status: int, detail: str, **extra: Any) -> client_module.ApiError:
    return client_module._problem(httpx.Response(status, json={"detail": detail, **extra}))


def test_a_missing_organization_names_how_to_list_them() -> None:
    error = _problem(404, "organization 'acme' not found")
    assert error.message == "organization 'acme' not found"
    assert error.hint is not None and "hangar orgs list" in error.hint


@pytest.mark.parametrize(
    ("detail", "command"),
    [
        ("app 'web' not found", "hangar apps list"),
        ("machine 'm_1' not found", "hangar machines list"),
        ("host 'h9' not found", "hangar hosts list"),
        ("release v7 not found", "hangar releases"),
    ],
)
def test_a_missing_object_names_its_listing(detail: str, command: str) -> None:
    hint = _problem(404, detail).hint
    assert hint is not None and command in hint


def test_the_servers_own_hint_wins() -> None:
    assert _problem(404, "app 'x' not found", hint="ask bob").hint == "ask bob"


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def get(self, path: str, **params: Any) -> Any:
        self.calls.append(("GET", path))
        if path == "/v1/machines/m_1":
            return {"id": "m_1", "app": "web", "org": "acme"}
        if path.endswith("/events"):
            return []
        return {"id": "m_1", "state": "started"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(machines, "client", lambda ctx: fake)
    return fake


@pytest.mark.parametrize("verb", ["show", "events"])
def test_a_machine_id_is_enough(api: FakeApi, verb: str) -> None:
    assert run(["machines", verb, "m_1"]) == 0
    assert api.calls[0] == ("GET", "/v1/machines/m_1")
    assert api.calls[1][1].startswith("/v1/apps/web/machines/m_1")


def test_an_app_flag_skips_the_lookup(api: FakeApi) -> None:
    assert run(["machines", "show", "m_1", "--app", "other"]) == 0
    assert api.calls == [("GET", "/v1/apps/other/machines/m_1")]


def test_a_failed_deploy_says_what_the_machines_actually_run() -> None:
    from hangar.cli.deploy import running_now

    machines = [
        {"id": "m_1", "state": "started", "running_version": 5},
        {"id": "m_2", "state": "started", "running_version": 6},  # not yet rolled back
        {"id": "m_3", "state": "destroyed", "running_version": 6},
    ]
    assert running_now(machines, "web") == (
        "its machines run v5 on m_1; v6 on m_2 (`hangar status --app web`)"
    )
    assert running_now([], "web") == "web has no machines now"
