"""Paths in hangar.toml are the file's, not the current directory's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hangar.cli import deploy
from hangar.cli.main import run

CONFIG = """
app = "hello"
[build]
  image = "oci:image:latest"
"""


class FakeApi:
    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self.posted.append(kwargs["json"])
        return {"version": 1, "strategy": "rolling", "status": "pending"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(deploy, "client", lambda ctx: fake)
    return fake


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hangar.toml").write_text(CONFIG)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_deploy_in_the_apps_directory_finds_its_image(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "app")
    assert run(["deploy", "--detach"]) == 0
    assert api.posted[0]["image"] == f"oci:{(project / 'app' / 'image').resolve()}:latest"


def test_deploy_from_elsewhere_takes_the_image_from_the_files_directory(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "elsewhere")
    assert run(["deploy", "--config", "../app/hangar.toml", "--detach"]) == 0
    assert api.posted[0]["image"] == f"oci:{(project / 'app' / 'image').resolve()}:latest"


def test_an_image_flag_is_the_callers_path(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "elsewhere")
    assert run(["deploy", "-c", "../app/hangar.toml", "-i", "oci:mine:v2", "--detach"]) == 0
    assert api.posted[0]["image"] == f"oci:{(project / 'elsewhere' / 'mine').resolve()}:v2"


def test_validating_a_missing_file_suggests_only_what_the_command_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["config", "validate", "missing.toml"]) == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert error == "error: cannot read missing.toml: no such file"
    assert "--config" not in hint and "hangar config validate PATH" in hint
